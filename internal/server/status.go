package server

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/keys"
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
func toStatus(err error, log *slog.Logger) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st
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
	case errors.Is(err, ErrRequiresProposal), errors.Is(err, ErrCeremonyDone), errors.Is(err, ErrNoCeremony),
		errors.Is(err, quorum.ErrExpired), errors.Is(err, quorum.ErrExecuted), errors.Is(err, quorum.ErrVetoed),
		errors.Is(err, quorum.ErrNotReady), errors.Is(err, quorum.ErrProposalMismatch):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrGovNotFound), errors.Is(err, quorum.ErrUnknownProposal):
		code = codes.NotFound
	case errors.Is(err, quorum.ErrDuplicateApproval), errors.Is(err, quorum.ErrDuplicateProposal):
		code = codes.AlreadyExists
	case errors.Is(err, quorum.ErrBadSignature), errors.Is(err, quorum.ErrReplay), errors.Is(err, quorum.ErrUnknownOfficer),
		errors.Is(err, policy.ErrOrderExhausted), errors.Is(err, policy.ErrOrderExpired):
		code = codes.PermissionDenied
	case errors.Is(err, quorum.ErrInvalidProposal), errors.Is(err, quorum.ErrNotCanonical),
		errors.Is(err, quorum.ErrInvalidOfficers), errors.Is(err, quorum.ErrUnsupportedKey):
		code = codes.InvalidArgument
	case errors.Is(err, errNoRole), errors.Is(err, policy.ErrNoRole), errors.Is(err, policy.ErrNotGranted),
		errors.Is(err, policy.ErrContextMismatch), errors.Is(err, policy.ErrFrozen),
		errors.Is(err, policy.ErrNoBudget), errors.Is(err, policy.ErrUnknownOp):
		code = codes.PermissionDenied
	case errors.Is(err, policy.ErrRateLimited), errors.Is(err, policy.ErrVolumeExceeded),
		errors.Is(err, policy.ErrBatchTooLarge):
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
