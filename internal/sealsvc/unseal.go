package sealsvc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/seal"
)

// officer authenticates an officer-only call.
func (s *Service) officer(ctx context.Context) (string, policy.Role, error) {
	id, role, err := s.caller(ctx)
	if err != nil {
		return id, role, err
	}
	if role != policy.RoleOfficer {
		return id, role, status.Errorf(codes.PermissionDenied, "only officers may submit or fetch shares (caller is %s)", role)
	}
	return id, role, nil
}

// GetShare implements SealService.
func (s *Service) GetShare(ctx context.Context, req *custodyv1.GetShareRequest) (_ *custodyv1.EncryptedShare, err error) {
	id, role, err := s.officer(ctx)
	rec := audit.Record{Identity: orUnauthenticated(id), Role: string(role), Method: "GetShare"}
	defer func() { s.finish(ctx, rec, err) }()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	u := s.unsealer
	s.mu.Unlock()
	if u == nil || s.State() != StateSealed {
		return nil, status.Errorf(codes.FailedPrecondition, "custodyd is %s, not sealed", s.State())
	}
	// Nonces are counted per caller: an officer asking again and again
	// spends only the nonces handed to them.
	env, tgt, err := u.TargetFor(id, req.GetOfficerFingerprint())
	if err != nil {
		return nil, toStatus(err)
	}
	rec.Detail = fmt.Sprintf("share %d served to %s", env.Index, env.Officer)
	return encryptedShare(u.Record(), env, tgt), nil
}

func encryptedShare(r *seal.Record, env seal.Envelope, tgt seal.Target) *custodyv1.EncryptedShare {
	return &custodyv1.EncryptedShare{VaultId: r.VaultID, Epoch: r.Epoch, Index: uint32(env.Index), Officer: env.Officer,
		Threshold: uint32(r.Threshold), SealedShare: env.Sealed, Commitment: env.Commitment, SharePublicKeyDer: env.ShareKey,
		UnsealPublicKeyDer: tgt.EphemeralKey, UnsealKeyFingerprint: seal.Fingerprint(tgt.EphemeralKey), Nonce: tgt.Nonce}
}

// Unseal implements SealService.
func (s *Service) Unseal(ctx context.Context, req *custodyv1.UnsealRequest) (_ *custodyv1.SealStatus, err error) {
	id, role, err := s.officer(ctx)
	rec := audit.Record{Identity: orUnauthenticated(id), Role: string(role), Method: "Unseal"}
	if err != nil {
		s.m.submission("not_officer")
		s.finish(ctx, rec, err)
		return nil, err
	}
	// One unseal at a time: the submission that completes the threshold
	// logs in while holding mu, so no other share lands mid-way.
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.unsealer
	if u == nil || s.State() != StateSealed || s.completing {
		err = status.Errorf(codes.FailedPrecondition, "custodyd is %s, not sealed", s.State())
		if s.completing {
			err = status.Error(codes.FailedPrecondition, "enough shares are in: custodyd is unsealing")
		}
		s.finish(ctx, rec, err)
		return nil, err
	}
	sub := &seal.Submission{Ref: seal.VaultRef{VaultID: req.GetVaultId(), Epoch: req.GetEpoch()}, Index: int(req.GetIndex()),
		OfficerFingerprint: req.GetOfficerFingerprint(), EphemeralFingerprint: req.GetUnsealKeyFingerprint(),
		Nonce: req.GetNonce(), Sealed: req.GetSealedShare(), Signature: req.GetSignature()}
	p, pin, holder, serr := u.Submit(sub)
	if holder != "" {
		rec.Detail = "officer " + holder + ": "
	}
	if serr != nil {
		s.m.submission(outcome(serr))
		rec.Detail += "share refused: " + serr.Error()
		err = toStatus(serr)
		s.detail.Store(fmt.Sprintf("last refused submission (%s): %s", orUnauthenticated(id), serr))
		s.finish(ctx, rec, err)
		return nil, err
	}
	s.m.submission("accepted")
	rec.Detail += fmt.Sprintf("share %d accepted: %d of %d", req.GetIndex(), p.Have, p.Need)
	if pin == nil {
		// The accepted share is on the record before the officer hears so.
		if aerr := s.record(ctx, withOutcome(rec, nil)); aerr != nil {
			u.Reset()
			return nil, status.Error(codes.Unavailable, "audit log unavailable: share refused (submit it again when it is back)")
		}
		return s.statusLocked(), nil
	}
	defer pin.Destroy()
	rec.Detail += "; unsealing"
	if aerr := s.record(ctx, withOutcome(rec, nil)); aerr != nil {
		return nil, status.Error(codes.Unavailable, "audit log unavailable: unseal refused (submit the shares again when it is back)")
	}
	// Log in and complete the start. The lock is released by the deferred
	// Unlock; Complete calls LoggedIn, which does not take it again.
	if cerr := s.completeLocked(ctx, pin.Bytes()); cerr != nil {
		s.log.Error("seal: unseal failed after the shares were accepted", "err", cerr)
		s.detail.Store("unseal failed: " + cerr.Error())
		_ = s.record(ctx, audit.Record{Identity: "custodyd", Method: "Unsealed", Outcome: audit.OutcomeError,
			Code: codes.FailedPrecondition.String(), Detail: trunc("unseal failed: " + cerr.Error())})
		return nil, status.Errorf(codes.FailedPrecondition, "shares accepted but the start could not complete: %v", cerr)
	}
	by := strings.Join(p.Officers, ", ")
	s.log.Info("seal: unsealed", "officers", by)
	_ = s.record(ctx, audit.Record{Identity: "custodyd", Method: "Unsealed", Outcome: audit.OutcomeOK, Code: codes.OK.String(),
		Detail: trunc("unsealed by " + by)})
	return s.statusLocked(), nil
}

// completeLocked runs the daemon's Complete with mu held; LoggedIn takes
// mu itself, so it is released around the call.
func (s *Service) completeLocked(ctx context.Context, pin []byte) error {
	s.completing = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.completing = false
	}()
	// The start must not stop half-way because the last officer's client
	// gave up waiting: it runs to the end (bounded) on its own context.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), completeTimeout)
	defer cancel()
	return s.o.Complete(cctx, pin)
}

// completeTimeout bounds a start once the PIN is known (login, lease, store,
// registry, governance).
const completeTimeout = 5 * time.Minute

// Expire discards accepted shares that waited longer than the progress TTL
// and audits it. The daemon calls it periodically while sealed.
func (s *Service) Expire(ctx context.Context) {
	s.mu.Lock()
	u := s.unsealer
	s.mu.Unlock()
	if u == nil {
		return
	}
	if by := u.Expire(); len(by) > 0 {
		s.log.Warn("seal: unseal progress expired; shares discarded", "officers", strings.Join(by, ", "))
		_ = s.record(ctx, audit.Record{Identity: "custodyd", Method: "UnsealExpired", Outcome: audit.OutcomeError,
			Code: codes.DeadlineExceeded.String(), Detail: trunc(fmt.Sprintf("%d accepted shares discarded after %s (%s)", len(by), s.o.ProgressTTL, strings.Join(by, ", ")))})
	}
}

// ExpireLoop calls Expire every interval until ctx ends.
func (s *Service) ExpireLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Expire(ctx)
		}
	}
}

// finish audits a call (the answer is err).
func (s *Service) finish(ctx context.Context, rec audit.Record, err error) {
	if aerr := s.record(ctx, withOutcome(rec, err)); aerr != nil {
		s.log.Error("seal: audit append failed", "method", rec.Method, "err", aerr)
	}
}

func withOutcome(rec audit.Record, err error) audit.Record {
	st := status.Convert(err)
	rec.Code = st.Code().String()
	switch st.Code() {
	case codes.OK:
		rec.Outcome = audit.OutcomeOK
	case codes.PermissionDenied, codes.Unauthenticated:
		rec.Outcome = audit.OutcomeDenied
	default:
		rec.Outcome = audit.OutcomeError
	}
	if err != nil && rec.Detail == "" {
		rec.Detail = st.Message()
	}
	rec.Detail = trunc(rec.Detail)
	return rec
}

func trunc(s string) string {
	if len(s) > 256 {
		return s[:256]
	}
	return s
}

func orUnauthenticated(id string) string {
	if id == "" {
		return "unauthenticated"
	}
	return id
}

// toStatus maps the protocol's errors to gRPC codes.
func toStatus(err error) error {
	var code codes.Code
	switch {
	case errors.Is(err, seal.ErrNotOfficer):
		code = codes.PermissionDenied
	case errors.Is(err, seal.ErrBadShare), errors.Is(err, seal.ErrFormat):
		code = codes.InvalidArgument
	case errors.Is(err, seal.ErrReplayed), errors.Is(err, seal.ErrDuplicate), errors.Is(err, seal.ErrWrongTarget):
		code = codes.FailedPrecondition
	default:
		if st, ok := status.FromError(err); ok {
			return st.Err()
		}
		code = codes.Internal
	}
	return status.Error(code, err.Error())
}

// outcome names a refusal for the submissions metric (bounded labels).
func outcome(err error) string {
	switch {
	case errors.Is(err, seal.ErrNotOfficer):
		return "not_officer"
	case errors.Is(err, seal.ErrBadShare), errors.Is(err, seal.ErrFormat):
		return "bad_share"
	case errors.Is(err, seal.ErrReplayed):
		return "replayed"
	case errors.Is(err, seal.ErrDuplicate):
		return "duplicate"
	case errors.Is(err, seal.ErrWrongTarget):
		return "wrong_target"
	}
	return "error"
}
