// Package sealsvc is custodyd's side of sealed start (internal/seal): the
// SealService a sealed custodyd serves, the key ceremony's PIN rotation,
// and rekey by quorum.
//
// Invariants:
//
//   - Before login the service reads its seal record raw (the store's values
//     are authenticated by an HSM key it cannot use yet); after login the
//     record is read again through the authenticated store and a record
//     that fails authentication stops the start.
//   - Every submission, share fetch and rekey confirmation is audited,
//     accepted or refused, and the record is durable before the answer (and
//     before the unseal it completes). Before the key ceremony there is no
//     audit key: records are held in memory and written first thing once
//     the audit log opens; beyond maxPending, calls are counted by kind and
//     each kind is written as one summary record, so none goes unrecorded.
//   - The PIN is replaced only through hsm.PINChange, and a replacement is
//     final only once the shares of the new PIN are durable in the store;
//     otherwise the old PIN is restored.
//   - Shares and PINs are in secmem Buffers and never in a log line, an
//     error, a metric or an audit record.
package sealsvc

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/gateway"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/seal"
	"github.com/custodyhq/custody/internal/store"
)

// Store keys of the seal state.
const (
	RecordKey = "seal/record"
	RekeyKey  = "seal/rekey"
)

// State is where a custodyd is in its start.
type State int32

// States, as custodyv1.SealState names them.
const (
	StateAwaitingCeremony State = State(custodyv1.SealState_SEAL_STATE_AWAITING_CEREMONY)
	StateSealed           State = State(custodyv1.SealState_SEAL_STATE_SEALED)
	StateUnsealed         State = State(custodyv1.SealState_SEAL_STATE_UNSEALED)
	StateFenced           State = State(custodyv1.SealState_SEAL_STATE_FENCED)
)

func (s State) String() string {
	switch s {
	case StateAwaitingCeremony:
		return "awaiting_ceremony"
	case StateSealed:
		return "sealed"
	case StateUnsealed:
		return "unsealed"
	case StateFenced:
		return "fenced"
	}
	return "unknown"
}

// Auditor is where seal records go: the audit log (*audit.Log).
type Auditor interface {
	Append(ctx context.Context, rec audit.Record) (uint64, error)
}

// Token is what the service needs of the logged-in HSM (*hsm.Module).
type Token interface {
	ChangePIN(ctx context.Context, newPIN []byte) (*hsm.PINChange, error)
	PINLengths(ctx context.Context) (minLen, maxLen int, err error)
}

// Options wire a Service.
type Options struct {
	// RawValue reads a store value before login, without authenticating it.
	RawValue func(ctx context.Context, key string) ([]byte, error)
	// PINSource is "" for a sealed vault, or seal.SourcePINFile/PINEnv.
	PINSource string
	// Roles maps identities (mTLS) to roles, from configuration.
	Roles map[string]policy.Role
	// ProgressTTL bounds how long accepted shares wait for the rest
	// (default seal.DefaultProgressTTL).
	ProgressTTL time.Duration
	// Complete is called with the PIN (recombined from the officers'
	// shares, or the installer's at the ceremony): it logs in and completes
	// the start. It must not keep pin; the caller destroys it.
	Complete func(ctx context.Context, pin []byte) error
	// Registerer receives the seal metrics; nil registers none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Now        func() time.Time
}

// Service is the seal state of one custodyd and its SealService.
type Service struct {
	custodyv1.UnimplementedSealServiceServer

	o   Options
	log *slog.Logger
	eph *seal.EphemeralKey

	state  atomic.Int32
	detail atomic.Value // string

	mu         sync.Mutex // serialises unseal completion, ceremony and rekey
	rec        *seal.Record
	unsealer   *seal.Unsealer
	completing bool // the threshold is reached and Complete is running

	// Set at login.
	loggedIn atomic.Pointer[loggedIn]
	rekey    *pendingRekey // guarded by mu

	auditMu sync.Mutex
	auditor Auditor
	pending []audit.Record // before the audit log opens (pre-ceremony)
	// overflow counts the calls made once pending was full, by what their
	// record would have said; each becomes one summary record.
	overflow      map[overflowKey]int
	overflowOrder []overflowKey

	m metrics
}

type loggedIn struct {
	store    store.Store
	token    Token
	auditKey []byte
}

// maxPending bounds the records held in memory before the audit log opens.
const maxPending = 1000

// maxOverflowKinds bounds the kinds of call counted beyond maxPending; any
// further kind is counted under one catch-all key.
const maxOverflowKinds = 64

// overflowKey is what the summary of calls made beyond maxPending keeps of
// their records.
type overflowKey struct {
	identity, role, method, code string
	outcome                      audit.Outcome
}

// New reads the seal record (raw) and decides the start state: unsealed
// soon (a PIN source is configured), sealed (a record exists) or awaiting
// the ceremony.
func New(ctx context.Context, o Options) (*Service, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ProgressTTL <= 0 {
		o.ProgressTTL = seal.DefaultProgressTTL
	}
	eph, err := seal.NewEphemeralKey()
	if err != nil {
		return nil, err
	}
	s := &Service{o: o, log: o.Logger, eph: eph}
	s.detail.Store("")
	s.m = newMetrics(o.Registerer, s)
	raw, err := o.RawValue(ctx, RecordKey)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("seal record: %w", err)
	default:
		if s.rec, err = seal.ParseRecord(raw); err != nil {
			return nil, fmt.Errorf("seal record %s: %w", RecordKey, err)
		}
	}
	switch {
	case o.PINSource != "":
		s.state.Store(int32(StateSealed)) // until Complete runs, moments later
	case s.rec != nil:
		s.state.Store(int32(StateSealed))
		if s.unsealer, err = seal.NewUnsealer(s.rec, eph, o.ProgressTTL, o.Now); err != nil {
			return nil, err
		}
	default:
		s.state.Store(int32(StateAwaitingCeremony))
	}
	return s, nil
}

// State is the current seal state.
func (s *Service) State() State { return State(s.state.Load()) }

// PINSource is where the PIN comes from: "officers" or the configured source.
func (s *Service) PINSource() string {
	if s.o.PINSource != "" {
		return s.o.PINSource
	}
	return seal.SourceOfficers
}

// UnsealKeyFingerprint is the ephemeral unseal key's fingerprint.
func (s *Service) UnsealKeyFingerprint() string { return s.eph.Fingerprint() }

// Record is the seal record read at start (nil before the ceremony).
func (s *Service) Record() *seal.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rec
}

// Progress is the unseal progress (zero when not sealed).
func (s *Service) Progress() seal.Progress {
	s.mu.Lock()
	u := s.unsealer
	s.mu.Unlock()
	if u == nil {
		return seal.Progress{}
	}
	return u.Progress()
}

// SetAuditor sets where records go and writes any held in memory first.
// nil goes back to holding records in memory (a start that failed before
// the ceremony closes the audit log it opened).
func (s *Service) SetAuditor(ctx context.Context, a Auditor) error {
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	if a == nil {
		s.auditor = nil
		return nil
	}
	for len(s.pending) > 0 {
		if _, err := a.Append(ctx, s.pending[0]); err != nil {
			return fmt.Errorf("audit records made before the audit log opened: %w", err)
		}
		s.pending = s.pending[1:]
	}
	for len(s.overflowOrder) > 0 {
		k := s.overflowOrder[0]
		rec := audit.Record{Time: s.o.Now(), Identity: k.identity, Role: k.role, Method: k.method, Outcome: k.outcome, Code: k.code,
			Detail: fmt.Sprintf("%d %s before the audit log opened, beyond the %d held one by one", s.overflow[k], overflowDetail, maxPending)}
		if _, err := a.Append(ctx, rec); err != nil {
			return fmt.Errorf("audit records made before the audit log opened: %w", err)
		}
		delete(s.overflow, k)
		s.overflowOrder = s.overflowOrder[1:]
	}
	s.auditor = a
	return nil
}

// overflowDetail is the text of a summary record of calls made beyond
// maxPending before the audit log opened (after their count).
const overflowDetail = "more such calls"

// countOverflow counts a call whose record found the holding buffer full.
// Called with auditMu held.
func (s *Service) countOverflow(rec audit.Record) {
	k := overflowKey{identity: rec.Identity, role: rec.Role, method: rec.Method, code: rec.Code, outcome: rec.Outcome}
	if _, ok := s.overflow[k]; !ok && len(s.overflow) >= maxOverflowKinds {
		k = overflowKey{identity: "various", method: "various", code: "various", outcome: audit.OutcomeError}
	}
	if s.overflow == nil {
		s.overflow = map[overflowKey]int{}
	}
	if _, ok := s.overflow[k]; !ok {
		s.overflowOrder = append(s.overflowOrder, k)
	}
	s.overflow[k]++
}

// record writes one audit record; it is durable when it returns nil (held
// in memory only before the ceremony, when there is no audit log).
func (s *Service) record(ctx context.Context, rec audit.Record) error {
	rec.Time = s.o.Now()
	s.auditMu.Lock()
	a := s.auditor
	if a == nil {
		if len(s.pending) < maxPending {
			s.pending = append(s.pending, rec)
		} else {
			s.countOverflow(rec)
		}
		s.auditMu.Unlock()
		return nil
	}
	s.auditMu.Unlock()
	_, err := a.Append(context.WithoutCancel(ctx), rec)
	return err
}

// LoggedIn is called by the daemon once the HSM is logged in and the
// authenticated store is open: it checks the record read before login
// against its authenticated copy, drops a rekey this process can no longer
// finish, and switches to unsealed.
func (s *Service) LoggedIn(ctx context.Context, st store.Store, tok Token, auditKey crypto.PublicKey) error {
	der, err := x509.MarshalPKIXPublicKey(auditKey)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	kv, err := st.Get(ctx, RecordKey)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if s.rec != nil {
			return fmt.Errorf("%w: the seal record read before login is not in the authenticated store", store.ErrTampered)
		}
	case err != nil:
		return fmt.Errorf("seal record: %w", err)
	default:
		rec, err := seal.ParseRecord(kv.Value)
		if err != nil {
			return fmt.Errorf("seal record: %w", err)
		}
		if s.o.PINSource == "" && (s.rec == nil || !sameRecord(rec, s.rec)) {
			return fmt.Errorf("%w: the seal record changed between start and login", store.ErrTampered)
		}
		if len(rec.AuditKey) > 0 && string(rec.AuditKey) != string(der) {
			return fmt.Errorf("%w: the seal record names another audit key than the token's", store.ErrTampered)
		}
		s.rec = rec
	}
	if _, err := st.Get(ctx, RekeyKey); err == nil {
		// A rekey's new PIN lived only in the memory of the process that
		// started it: it cannot be finished now, and the old PIN is still
		// the token's.
		if err := store.Delete(ctx, st, RekeyKey); err != nil {
			return fmt.Errorf("drop abandoned rekey: %w", err)
		}
		s.log.Warn("seal: a pending rekey was abandoned by the restart; the old shares stay in force (propose the rekey again)")
		_ = s.record(ctx, audit.Record{Identity: "custodyd", Method: "RekeyAbandoned", Outcome: audit.OutcomeError, Code: codes.Aborted.String(),
			Detail: "pending rekey abandoned by restart; old PIN and shares stay in force"})
	}
	s.loggedIn.Store(&loggedIn{store: st, token: tok, auditKey: der})
	s.unsealer = nil
	s.state.Store(int32(StateUnsealed))
	return nil
}

func sameRecord(a, b *seal.Record) bool {
	x, err1 := a.Encode()
	y, err2 := b.Encode()
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// Reseal goes back to the state before login after a start that failed
// once the PIN was known (the lease was held elsewhere, the store failed
// authentication): officers may try again, from the first share.
func (s *Service) Reseal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loggedIn.Store(nil)
	switch {
	case s.o.PINSource != "":
		s.state.Store(int32(StateSealed))
	case s.rec != nil:
		s.unsealer, _ = seal.NewUnsealer(s.rec, s.eph, s.o.ProgressTTL, s.o.Now)
		s.state.Store(int32(StateSealed))
	default:
		s.state.Store(int32(StateAwaitingCeremony))
	}
}

// Status is what GetSealStatus answers.
func (s *Service) Status() *custodyv1.SealStatus { return s.status() }

// Fence stops the vault: another custodyd took over the token.
func (s *Service) Fence(reason string) {
	s.detail.Store(reason)
	s.state.Store(int32(StateFenced))
}

// Register adds SealService to g.
func (s *Service) Register(g grpc.ServiceRegistrar) { custodyv1.RegisterSealServiceServer(g, s) }

// caller identifies the peer from its verified client certificate and
// returns its configured role. The seal service is not offered through the
// REST gateway: a forwarded identity is refused.
func (s *Service) caller(ctx context.Context) (string, policy.Role, error) {
	if _, fwd, err := gateway.ForwardedIdentity(ctx); err != nil || fwd {
		return "", "", status.Error(codes.Unauthenticated, "the seal service is not served through the gateway")
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return "", "", status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return "", "", status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	id, err := pki.Identity(ti.State.VerifiedChains[0][0])
	if err != nil {
		return "", "", status.Error(codes.Unauthenticated, err.Error())
	}
	role, ok := s.o.Roles[id]
	if !ok {
		return id, "", status.Errorf(codes.PermissionDenied, "identity %s has no role", id)
	}
	return id, role, nil
}

// GetSealStatus implements SealService.
// Answers are not audited (anyone with a role polls it); refusals are.
func (s *Service) GetSealStatus(ctx context.Context, _ *custodyv1.GetSealStatusRequest) (*custodyv1.SealStatus, error) {
	if id, _, err := s.caller(ctx); err != nil {
		s.finish(ctx, audit.Record{Identity: id, Method: "GetSealStatus"}, err)
		return nil, err
	}
	return s.status(), nil
}

func (s *Service) status() *custodyv1.SealStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statusLocked()
}

// statusLocked is status with mu held.
func (s *Service) statusLocked() *custodyv1.SealStatus {
	st := &custodyv1.SealStatus{State: custodyv1.SealState(s.State()), PinSource: s.PINSource(),
		UnsealPublicKeyDer: s.eph.PublicKey(), UnsealKeyFingerprint: s.eph.Fingerprint(), Detail: s.detail.Load().(string)}
	if s.rec != nil {
		st.VaultId, st.Epoch, st.SharesNeeded = s.rec.VaultID, s.rec.Epoch, uint32(s.rec.Threshold)
	}
	if r := s.rekey; r != nil {
		rs := &custodyv1.RekeyStatus{Epoch: r.rec.Epoch}
		for _, e := range r.rec.Shares {
			if r.confirmed[e.Index] {
				rs.Confirmed = append(rs.Confirmed, e.Officer)
			} else {
				rs.Waiting = append(rs.Waiting, e.Officer)
			}
		}
		st.Rekey = rs
	}
	if u := s.unsealer; u != nil {
		p := u.Progress()
		st.SharesAccepted, st.OfficersAccepted = uint32(p.Have), p.Officers
		if !p.Expires.IsZero() {
			st.ProgressExpires = timestamppb.New(p.Expires)
		}
	}
	return st
}
