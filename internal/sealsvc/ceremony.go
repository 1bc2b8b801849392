package sealsvc

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/seal"
	"github.com/custodyhq/custody/internal/secmem"
	"github.com/custodyhq/custody/internal/store"
)

// OpenCeremonyPIN is the first step of a key ceremony on a custodyd
// awaiting one: it checks that the caller is an operator and decrypts the
// installer's PIN, which the request carries encrypted to this custodyd's
// unseal key. The caller logs in with it and destroys it. Refusals are
// audited.
func (s *Service) OpenCeremonyPIN(ctx context.Context, req *custodyv1.InitCeremonyRequest) (_ *secmem.Buffer, err error) {
	id, role, err := s.caller(ctx)
	rec := audit.Record{Identity: orUnauthenticated(id), Role: string(role), Method: "InitCeremony"}
	defer func() {
		if err != nil {
			s.finish(ctx, rec, err)
		}
	}()
	switch {
	case err != nil:
		return nil, err
	case role != policy.RoleOperator:
		return nil, status.Errorf(codes.PermissionDenied, "only an operator may run the key ceremony (caller is %s)", role)
	case s.State() != StateAwaitingCeremony:
		return nil, status.Errorf(codes.FailedPrecondition, "custodyd is %s, not awaiting its key ceremony", s.State())
	case len(req.GetEncryptedPin()) == 0:
		return nil, status.Error(codes.InvalidArgument, "encrypted_pin: this custodyd has no PIN source; the ceremony must carry the installer's PIN (custodyctl ceremony init prompts for it)")
	case req.GetUnsealKeyFingerprint() != s.eph.Fingerprint():
		return nil, status.Errorf(codes.FailedPrecondition, "unseal_key_fingerprint: the PIN was encrypted to key %s, but this custodyd's unseal key is %s (restarted since?)",
			short(req.GetUnsealKeyFingerprint()), short(s.eph.Fingerprint()))
	}
	pin, err := s.eph.OpenPIN(req.GetEncryptedPin())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "encrypted_pin: "+err.Error())
	}
	return pin, nil
}

// CeremonyFailed audits a ceremony whose start could not complete with the
// installer's PIN (the token refused it, or the start failed).
func (s *Service) CeremonyFailed(ctx context.Context, cause error) {
	id, role, _ := s.caller(ctx)
	code := codes.FailedPrecondition
	if errors.Is(cause, hsm.ErrLogin) {
		code = codes.PermissionDenied // the token refused the installer's PIN
	}
	s.finish(ctx, audit.Record{Identity: orUnauthenticated(id), Role: string(role), Method: "InitCeremony",
		Detail: "start with the installer's PIN failed: " + cause.Error()}, status.Error(code, cause.Error()))
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16]
	}
	return fp
}

// CeremonyOfficer is one officer declared at the ceremony.
type CeremonyOfficer struct {
	Name       string
	SigningKey []byte // PKIX DER
	ShareKey   []byte // PKIX DER, P-256
}

// Rotation is the ceremony's PIN replacement: the token already has the new
// PIN; the shares become durable with the ceremony's own store write (Ops),
// after which Commit makes the change final. Abort, deferred by the caller,
// restores the installer's PIN if Commit was never reached.
type Rotation struct {
	s         *Service
	seal      quorum.TranscriptSeal
	ops       []store.Op
	change    *hsm.PINChange
	rec       *seal.Record
	committed bool
}

// Transcript is the ceremony transcript's "seal" section.
func (r *Rotation) Transcript() *quorum.TranscriptSeal {
	if r == nil {
		return nil
	}
	t := r.seal
	return &t
}

// Ops are the store writes to make durable with the ceremony.
func (r *Rotation) Ops() []store.Op {
	if r == nil {
		return nil
	}
	return r.ops
}

// Step describes the rotation for the transcript's steps.
func (r *Rotation) Step() string {
	if r == nil {
		return ""
	}
	if r.rec == nil {
		return "hsm pin: from " + r.seal.PINSource + " on the host (not split)"
	}
	return fmt.Sprintf("hsm pin: installer's PIN replaced (C_SetPIN) by a random PIN split %d of %d among the officers, vault %x epoch %d",
		r.rec.Threshold, len(r.rec.Shares), r.rec.VaultID, r.rec.Epoch)
}

// Commit makes the rotation final once Ops are durable.
func (r *Rotation) Commit() {
	if r == nil || r.committed {
		return
	}
	r.committed = true
	r.change.Done()
	if r.rec != nil {
		r.s.mu.Lock()
		r.s.rec = r.rec
		r.s.mu.Unlock()
		r.s.log.Info("seal: the installer's PIN is retired; the new PIN exists only as the officers' shares",
			"threshold", r.rec.Threshold, "officers", len(r.rec.Shares))
	}
}

// Abort restores the installer's PIN unless Commit ran.
func (r *Rotation) Abort(ctx context.Context) {
	if r == nil || r.committed || r.change == nil {
		return
	}
	r.committed = true
	if err := r.change.Revert(context.WithoutCancel(ctx)); err != nil {
		// The token keeps the new PIN and this process the only copy of it:
		// running the ceremony again now (it is not recorded as done)
		// replaces it from here.
		r.s.log.Error("seal: the ceremony failed after the PIN was replaced and the installer's PIN could not be restored; run the ceremony again before stopping custodyd", "err", err)
	}
}

// newPINLen is the length of generated PINs (62 symbols: about 238 bits),
// shortened to what the token accepts.
const newPINLen = 40

// minStrongPINLen is the shortest generated PIN accepted (about 95 bits).
const minStrongPINLen = 16

const pinAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newPIN makes a random PIN nobody sees, in locked memory.
func newPIN(ctx context.Context, tok Token) (*secmem.Buffer, error) {
	minLen, maxLen, err := tok.PINLengths(ctx)
	if err != nil {
		return nil, err
	}
	n := newPINLen
	if maxLen > 0 && maxLen < n {
		n = maxLen
	}
	if n < minStrongPINLen || n < minLen {
		return nil, fmt.Errorf("the token accepts PINs of %d to %d characters; a generated PIN needs at least %d", minLen, maxLen, minStrongPINLen)
	}
	return randomPIN(n)
}

// randomPIN draws n symbols of pinAlphabet, uniformly, in locked memory.
// Random bytes are read into a locked scratch area and rejection-sampled
// there (the low 6 bits; 62 and 63 are drawn again), so nothing the PIN
// is made of passes through the Go heap: crypto/rand.Int would leave a
// big.Int and a random byte per symbol there, in a row, unzeroed.
func randomPIN(n int) (*secmem.Buffer, error) {
	buf, err := secmem.New(n)
	if err != nil {
		return nil, err
	}
	scratch, err := secmem.New(2 * n)
	if err != nil {
		buf.Destroy()
		return nil, err
	}
	defer scratch.Destroy()
	b, r := buf.Bytes(), scratch.Bytes()
	// Each byte is kept with probability 62/64; 2n bytes fall short of n
	// symbols about never, and 64 rounds bound the loop all the same.
	i := 0
	for round := 0; i < n && round < 64; round++ {
		_, _ = rand.Read(r) // never fails: crypto/rand crashes the program instead
		for _, c := range r {
			if v := c & 63; v < byte(len(pinAlphabet)) && i < n {
				b[i] = pinAlphabet[v]
				i++
			}
		}
		clear(r)
	}
	if i < n {
		buf.Destroy()
		return nil, errors.New("new PIN: the random source is broken")
	}
	return buf, nil
}

// Ceremony is called by the key ceremony (InitCeremony) once its keys are
// made and before its transcript is signed. On a sealed vault it replaces
// the installer's PIN with a random one (C_SetPIN), splits that M-of-N
// among the officers, each share encrypted to the officer's share key, and
// checks every M of them recombine to it. The new PIN is never shown,
// logged or stored; the shares are stored by the ceremony's own write
// (Rotation.Ops). On a vault with a PIN source nothing changes and the
// transcript records the source.
func (s *Service) Ceremony(ctx context.Context, threshold int, officers []CeremonyOfficer) (*Rotation, error) {
	if s.o.PINSource != "" {
		return &Rotation{s: s, seal: quorum.TranscriptSeal{PINSource: s.o.PINSource}, committed: true}, nil
	}
	li := s.loggedIn.Load()
	if li == nil {
		return nil, status.Error(codes.FailedPrecondition, "the HSM is not logged in")
	}
	holders := make([]seal.Holder, len(officers))
	for i, o := range officers {
		if len(o.ShareKey) == 0 {
			return nil, status.Errorf(codes.InvalidArgument, "officers[%d].share_public_key_der: officer %s has no share key; a sealed vault splits its PIN among the officers (custodyctl officer keygen writes one)", i, o.Name)
		}
		if _, err := seal.ParsePublicKey(o.ShareKey); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "officers[%d].share_public_key_der: %v", i, err)
		}
		holders[i] = seal.Holder{Officer: o.Name, OfficerKey: o.SigningKey, ShareKey: o.ShareKey}
	}
	id, err := seal.NewVaultID()
	if err != nil {
		return nil, err
	}
	rec := &seal.Record{Format: seal.RecordFormat, VaultID: id, Epoch: 1, Threshold: threshold, AuditKey: li.auditKey, Created: s.o.Now().UTC()}
	pin, err := newPIN(ctx, li.token)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "new PIN: %v", err)
	}
	defer pin.Destroy()
	if rec.Shares, _, err = seal.Split(rec.Ref(), pin.Bytes(), threshold, holders); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "split the PIN: %v", err)
	}
	b, err := recordBytes(rec)
	if err != nil {
		return nil, err
	}
	change, err := li.token.ChangePIN(ctx, pin.Bytes())
	if err != nil {
		return nil, fmt.Errorf("replace the PIN: %w", err)
	}
	return &Rotation{s: s, rec: rec, seal: rec.Transcript(), ops: []store.Op{store.PutOp(RecordKey, b)}, change: change}, nil
}

func recordBytes(rec *seal.Record) ([]byte, error) {
	if err := rec.Validate(); err != nil {
		return nil, err
	}
	return rec.Encode()
}
