package client

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var (
	// ErrConfig means a Config is incomplete or one of its files is unusable.
	ErrConfig = errors.New("invalid client configuration")
	// ErrInvalidArgument means a caller's argument was refused locally,
	// before anything was sent to custodyd.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrClosed means the Client or Sealer was closed.
	ErrClosed = errors.New("closed")
	// ErrMessageFormat means the input is not a sealed message this version
	// understands.
	ErrMessageFormat = errors.New("not a custody sealed message")
	// ErrMessageAuth means a sealed message failed authentication: it was
	// altered, or the key name or encryption context is wrong.
	ErrMessageAuth = errors.New("authentication failed: message is corrupt or was altered, or the key or context is wrong")
	// ErrSealerExhausted means a conversation Sealer reached its message
	// limit; ask for a new one with SealerFor, which brings a new data key.
	ErrSealerExhausted = errors.New("conversation sealer reached its message limit")
	// ErrBudgetExhausted matches every *BudgetError with errors.Is.
	ErrBudgetExhausted = errors.New("budget exhausted")
	// ErrBadResponse means custodyd answered with something this client
	// cannot use (for example a data key of the wrong size).
	ErrBadResponse = errors.New("unexpected response from custodyd")
)

// retryAfterKey is the header or trailer that may carry a budget's retry
// hint when the status has no google.rpc.RetryInfo detail.
const retryAfterKey = "retry-after"

// BudgetError reports that custodyd refused a call with RESOURCE_EXHAUSTED
// because a budget (rate or volume) for this identity or key is spent.
// Retrying sooner than RetryAfter only spends more of the budget's patience:
// a sustained breach freezes the identity on the key until officers act.
type BudgetError struct {
	// RetryAfter is the server's hint of when to try again: from a
	// google.rpc.RetryInfo status detail, else from a "retry-after" header
	// or trailer; 0 when the server gave none.
	RetryAfter time.Duration
	// Status is the gRPC status as custodyd sent it.
	Status *status.Status
}

// Error returns the status message and the retry hint.
func (e *BudgetError) Error() string {
	msg := e.Status.Message()
	if e.RetryAfter > 0 {
		return fmt.Sprintf("budget exhausted (retry after %s): %s", e.RetryAfter, msg)
	}
	return "budget exhausted: " + msg
}

// GRPCStatus lets status.Code and status.FromError see RESOURCE_EXHAUSTED.
func (e *BudgetError) GRPCStatus() *status.Status { return e.Status }

// Is reports whether target is ErrBudgetExhausted.
func (e *BudgetError) Is(target error) bool { return target == ErrBudgetExhausted }

// budgetError converts a RESOURCE_EXHAUSTED status into a *BudgetError,
// reading the retry hint from the status details first, then from the
// response header and trailer.
func budgetError(st *status.Status, header, trailer metadata.MD) *BudgetError {
	be := &BudgetError{Status: st}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			if d := ri.GetRetryDelay().AsDuration(); d > 0 {
				be.RetryAfter = d
				return be
			}
		}
	}
	for _, md := range []metadata.MD{trailer, header} {
		for _, v := range md.Get(retryAfterKey) {
			if d, ok := parseRetryAfter(v, time.Now()); ok {
				be.RetryAfter = d
				return be
			}
		}
	}
	return be
}

// parseRetryAfter reads a retry hint as HTTP does (delay-seconds, or an
// HTTP-date), and also as a Go duration ("1.5s") or fractional seconds.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs < 0 || secs > float64(24*time.Hour/time.Second) {
			return 0, false
		}
		return time.Duration(secs * float64(time.Second)), true
	}
	if d, err := time.ParseDuration(v); err == nil {
		return d, d >= 0
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// isRetryable reports whether err is worth another attempt: UNAVAILABLE
// only. Everything else (including DEADLINE_EXCEEDED, whose time is spent,
// and RESOURCE_EXHAUSTED, which a retry would make worse) is final.
func isRetryable(err error) bool {
	return status.Code(err) == codes.Unavailable
}
