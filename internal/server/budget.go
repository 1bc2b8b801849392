package server

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/custodyhq/custody/internal/policy"
)

// budgetError is a refused budget spend; it becomes RESOURCE_EXHAUSTED with
// a RetryInfo detail (or PERMISSION_DENIED when the identity is frozen or
// has no budget).
type budgetError struct {
	err        error
	retryAfter time.Duration
}

func (e *budgetError) Error() string { return fmt.Sprintf("budget: %v", e.err) }
func (e *budgetError) Unwrap() error { return e.err }

// GRPCStatus lets status.FromError see the retry information.
func (e *budgetError) GRPCStatus() *status.Status {
	st := toStatus(e.err, nil)
	if errors.Is(e.err, policy.ErrFrozen) {
		// A freeze is the budget's own end state: still exhausted, but no
		// retry will help until an unfreeze proposal executes.
		return status.New(codes.ResourceExhausted, e.Error()+" (frozen until an unfreeze proposal executes)")
	}
	if st.Code() != codes.ResourceExhausted {
		return status.New(st.Code(), e.Error())
	}
	st = status.New(codes.ResourceExhausted, e.Error())
	if e.retryAfter > 0 {
		if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(e.retryAfter)}); err == nil {
			return d
		}
	}
	return st
}
