package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/governance"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/names"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
)

// ErrInvalidArgument marks a request the server refuses before doing anything.
var ErrInvalidArgument = errors.New("invalid argument")

// errDecryptFailed is what a caller learns when a ciphertext or wrapped key
// does not open: no hint whether the key, context or bytes were wrong.
var errDecryptFailed = errors.New("ciphertext did not authenticate under this key and context")

// toStatus is the one place where errors become gRPC status codes. Internal
// failures are logged and answered with a generic message.
// statusOK is every successful request's status (a Status is read-only).
var statusOK = status.New(codes.OK, "")

func toStatus(err error, log *slog.Logger) *status.Status {
	if err == nil {
		return statusOK
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st
	}
	var be *governance.BudgetError
	if errors.As(err, &be) {
		return budgetStatus(be)
	}
	msg := err.Error()
	code := codes.Internal
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, ErrUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, errUnknownMethod):
		code = codes.Unimplemented
	case errors.Is(err, errAuditUnavailable), errors.Is(err, governance.ErrUnavailable), errors.Is(err, store.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, governance.ErrInvalid), errors.Is(err, names.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, governance.ErrRequiresProposal), errors.Is(err, governance.ErrCeremonyDone), errors.Is(err, governance.ErrNoCeremony),
		errors.Is(err, quorum.ErrExpired), errors.Is(err, quorum.ErrExecuted), errors.Is(err, quorum.ErrVetoed),
		errors.Is(err, quorum.ErrNotReady), errors.Is(err, quorum.ErrProposalMismatch):
		code = codes.FailedPrecondition
	case errors.Is(err, governance.ErrNotFound), errors.Is(err, quorum.ErrUnknownProposal):
		code = codes.NotFound
	case errors.Is(err, quorum.ErrDuplicateApproval), errors.Is(err, quorum.ErrDuplicateProposal):
		code = codes.AlreadyExists
	case errors.Is(err, quorum.ErrBadSignature), errors.Is(err, quorum.ErrReplay), errors.Is(err, quorum.ErrUnknownOfficer),
		errors.Is(err, policy.ErrOrderExhausted), errors.Is(err, policy.ErrOrderExpired):
		code = codes.PermissionDenied
	case errors.Is(err, quorum.ErrInvalidProposal), errors.Is(err, quorum.ErrNotCanonical),
		errors.Is(err, quorum.ErrInvalidOfficers), errors.Is(err, quorum.ErrUnsupportedKey):
		code = codes.InvalidArgument
	case errors.Is(err, errNoRole), errors.Is(err, errRoleRefused), errors.Is(err, policy.ErrNoRole), errors.Is(err, policy.ErrNotGranted),
		errors.Is(err, policy.ErrContextMismatch), errors.Is(err, policy.ErrFrozen),
		errors.Is(err, policy.ErrNoBudget), errors.Is(err, policy.ErrUnknownOp):
		code = codes.PermissionDenied
	case errors.Is(err, policy.ErrRateLimited), errors.Is(err, policy.ErrVolumeExceeded),
		errors.Is(err, policy.ErrBatchTooLarge), errors.Is(err, governance.ErrFull):
		code = codes.ResourceExhausted
	case errors.Is(err, hsm.ErrDecrypt), errors.Is(err, errDecryptFailed):
		code, msg = codes.InvalidArgument, errDecryptFailed.Error()
	case errors.Is(err, keys.ErrKeyNotFound), errors.Is(err, keys.ErrVersionNotFound):
		code = codes.NotFound
	case errors.Is(err, keys.ErrKeyExists):
		code = codes.AlreadyExists
	case errors.Is(err, ErrInvalidArgument), errors.Is(err, keys.ErrInvalidArgument), errors.Is(err, hsm.ErrInvalidInput):
		code = codes.InvalidArgument
	case errors.Is(err, keys.ErrFailedPrecondition):
		code = codes.FailedPrecondition
	case errors.Is(err, hsm.ErrUnsupported):
		// The token lacks a capability this call needs; the message names
		// the mechanism. Everything else keeps serving.
		code = codes.FailedPrecondition
	case errors.Is(err, hsm.ErrUnavailable), errors.Is(err, store.ErrClosed), errors.Is(err, store.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, store.ErrConflict):
		code = codes.Aborted
	case errors.Is(err, hsm.ErrMechanism):
		code = codes.Unimplemented
	}
	if code == codes.Internal {
		if log == nil {
			log = slog.Default()
		}
		log.Error("internal error", "err", err)
		msg = "internal error"
		if errors.Is(err, keys.ErrKeyMaterialMissing) {
			msg = "key version unusable: its hsm object is missing (fails closed)"
		}
	}
	return status.New(code, msg)
}

// budgetStatus renders a refused budget spend: RESOURCE_EXHAUSTED with a
// RetryInfo detail when waiting helps; a freeze is still exhausted but no
// retry will help until an unfreeze proposal executes; a missing budget is
// PERMISSION_DENIED.
func budgetStatus(e *governance.BudgetError) *status.Status {
	if errors.Is(e.Err, policy.ErrFrozen) {
		return status.New(codes.ResourceExhausted, e.Error()+" (frozen until an unfreeze proposal executes)")
	}
	st := toStatus(e.Err, nil)
	if st.Code() != codes.ResourceExhausted {
		return status.New(st.Code(), e.Error())
	}
	st = status.New(codes.ResourceExhausted, e.Error())
	if e.RetryAfter > 0 {
		if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)}); err == nil {
			return d
		}
	}
	return st
}
