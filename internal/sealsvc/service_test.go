package sealsvc

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/seal"
	"github.com/custodyhq/custody/internal/store"
)

type testOfficer struct {
	signer crypto.Signer
	share  *ecdh.PrivateKey
	fp     string
}

// harness is a sealed Service on a real bbolt store and audit log, served
// over gRPC with mTLS on 127.0.0.1. Complete records the PIN it is given.
type harness struct {
	svc     *Service
	log     *audit.Log
	conn    *grpc.ClientConn
	offs    []testOfficer
	pin     []byte
	mu      sync.Mutex
	now     time.Time
	got     [][]byte
	failing error
}

func (h *harness) clock() time.Time { h.mu.Lock(); defer h.mu.Unlock(); return h.now }

func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{pin: []byte("Hq3k9ZxP0aLmN2bV7cR4tY6uW8eS1dF5gJ0oI2pK"), now: time.Unix(1_800_000_000, 0)}
	var holders []seal.Holder
	for i := range 3 {
		var s crypto.Signer
		if i == 0 {
			_, s, _ = ed25519.GenerateKey(rand.Reader)
		} else {
			s, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		sk, _ := ecdh.P256().GenerateKey(rand.Reader)
		okey, _ := x509.MarshalPKIXPublicKey(s.Public())
		skey, _ := seal.MarshalPublicKey(sk.PublicKey())
		h.offs = append(h.offs, testOfficer{signer: s, share: sk, fp: seal.Fingerprint(okey)})
		holders = append(holders, seal.Holder{Officer: []string{"alice", "bob", "carol"}[i], OfficerKey: okey, ShareKey: skey})
	}
	id, _ := seal.NewVaultID()
	rec := &seal.Record{Format: seal.RecordFormat, VaultID: id, Epoch: 1, Threshold: 2, Created: h.now}
	var err error
	if rec.Shares, _, err = seal.Split(rec.Ref(), h.pin, 2, holders); err != nil {
		t.Fatal(err)
	}
	b, _ := rec.Encode()
	raw, err := store.OpenBolt(filepath.Join(dir, "custody.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if err := store.Put(context.Background(), raw, RecordKey, append(b, make([]byte, 32)...)); err != nil {
		t.Fatal(err)
	}
	pk, err := pki.GenerateDev(filepath.Join(dir, "pki"), []string{"officer", "relay"})
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	h.svc, err = New(context.Background(), Options{
		RawValue: func(ctx context.Context, key string) ([]byte, error) {
			kv, err := raw.Get(ctx, key)
			if err != nil {
				return nil, err
			}
			return kv.Value[:len(kv.Value)-32], nil
		},
		Roles:       map[string]policy.Role{pk.Clients["officer"].Identity: policy.RoleOfficer, pk.Clients["relay"].Identity: policy.RoleRelay},
		ProgressTTL: time.Minute, Logger: quiet, Now: h.clock,
		Complete: func(_ context.Context, pin []byte) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.got = append(h.got, bytes.Clone(pin))
			return h.failing
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if h.log, err = audit.Open(context.Background(), filepath.Join(dir, "audit"), key, audit.Options{CheckpointInterval: -1, Logger: quiet}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.log.Close(context.Background()) })
	if err := h.svc.SetAuditor(context.Background(), h.log); err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := pki.ServerTLSConfig(pk.ServerCertFile, pk.ServerKeyFile, pk.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	h.svc.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	cl, err := pki.ClientTLSConfig(pk.CAFile, pk.Clients["officer"].CertFile, pk.Clients["officer"].KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if h.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cl))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.conn.Close() })
	return h
}

func (h *harness) unseal(t *testing.T, o testOfficer) (*custodyv1.SealStatus, error) {
	t.Helper()
	ctx := context.Background()
	c := custodyv1.NewSealServiceClient(h.conn)
	es, err := c.GetShare(ctx, &custodyv1.GetShareRequest{OfficerFingerprint: o.fp})
	if err != nil {
		t.Fatal(err)
	}
	ref := seal.VaultRef{VaultID: es.GetVaultId(), Epoch: es.GetEpoch()}
	sh, err := seal.OpenShare(o.share, ref, seal.Envelope{Index: int(es.GetIndex()), ShareKey: es.GetSharePublicKeyDer(), Sealed: es.GetSealedShare(), Commitment: es.GetCommitment()})
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Destroy()
	sub, err := seal.Submit(o.signer, sh.Bytes(), seal.Target{Ref: ref, Index: int(es.GetIndex()), EphemeralKey: es.GetUnsealPublicKeyDer(), Nonce: es.GetNonce()})
	if err != nil {
		t.Fatal(err)
	}
	return c.Unseal(ctx, &custodyv1.UnsealRequest{VaultId: sub.Ref.VaultID, Epoch: sub.Ref.Epoch, Index: uint32(sub.Index), OfficerFingerprint: sub.OfficerFingerprint,
		UnsealKeyFingerprint: sub.EphemeralFingerprint, Nonce: sub.Nonce, SealedShare: sub.Sealed, Signature: sub.Signature})
}

func (h *harness) methods(t *testing.T) []string {
	t.Helper()
	var out []string
	err := h.log.Read(context.Background(), audit.Filter{}, func(r audit.Record) error {
		out = append(out, r.Method+"/"+string(r.Outcome))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPartialUnsealProgressExpiresOnTheRecord(t *testing.T) {
	h := newHarness(t)
	if st, err := h.unseal(t, h.offs[0]); err != nil || st.GetSharesAccepted() != 1 || st.GetProgressExpires() == nil {
		t.Fatalf("first share: %v %v", st, err)
	}
	h.mu.Lock()
	h.now = h.now.Add(61 * time.Second)
	h.mu.Unlock()
	h.svc.Expire(context.Background())
	if p := h.svc.Progress(); p.Have != 0 {
		t.Fatalf("progress after expiry: %+v", p)
	}
	got := h.methods(t)
	if len(got) == 0 || got[len(got)-1] != "UnsealExpired/error" {
		t.Fatalf("audit %v", got)
	}
	// One share after expiry is one share: nothing completes.
	if st, err := h.unseal(t, h.offs[1]); err != nil || st.GetSharesAccepted() != 1 || len(h.got) != 0 {
		t.Fatalf("after expiry: %v %v (completed %d)", st, err, len(h.got))
	}
	if _, err := h.unseal(t, h.offs[2]); err != nil {
		t.Fatal(err)
	}
	if len(h.got) != 1 || !bytes.Equal(h.got[0], h.pin) {
		t.Fatalf("Complete got %d PINs", len(h.got))
	}
}

// TestFailedStartAfterTheSharesIsReportedAndCanBeRetried: the threshold is
// reached but the start fails (the token refused, the lease is held): the
// officers see why, the failure is on the record, and a new round works.
func TestFailedStartAfterTheSharesIsReportedAndCanBeRetried(t *testing.T) {
	h := newHarness(t)
	h.failing = errors.New("refusing to serve: another custodyd holds this HSM token")
	if _, err := h.unseal(t, h.offs[0]); err != nil {
		t.Fatal(err)
	}
	_, err := h.unseal(t, h.offs[1])
	if status.Code(err) != codes.FailedPrecondition || !bytes.Contains([]byte(status.Convert(err).Message()), []byte("another custodyd")) {
		t.Fatalf("failed start: %v", err)
	}
	got := h.methods(t)
	if got[len(got)-1] != "Unsealed/error" {
		t.Fatalf("audit %v", got)
	}
	if st := h.svc.Status(); st.GetState() != custodyv1.SealState_SEAL_STATE_SEALED || st.GetSharesAccepted() != 0 {
		t.Fatalf("after the failed start: %v", st)
	}
	h.failing = nil
	for _, o := range h.offs[1:] {
		if _, err := h.unseal(t, o); err != nil {
			t.Fatal(err)
		}
	}
	if len(h.got) != 2 || !bytes.Equal(h.got[1], h.pin) {
		t.Fatalf("retry: %d PINs", len(h.got))
	}
}

type memAuditor struct{ recs []audit.Record }

func (m *memAuditor) Append(_ context.Context, r audit.Record) (uint64, error) {
	m.recs = append(m.recs, r)
	return uint64(len(m.recs)), nil
}

// TestCallsBeyondTheHoldingBufferAreSummarisedNotLost: before the key
// ceremony there is no audit log; refusals are held in memory up to
// maxPending, and every call beyond is counted by kind and written as one
// summary record when the log opens, so a flood of refused calls cannot
// make later ones vanish from the record.
func TestCallsBeyondTheHoldingBufferAreSummarisedNotLost(t *testing.T) {
	s, err := New(context.Background(), Options{RawValue: func(context.Context, string) ([]byte, error) { return nil, store.ErrNotFound },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if s.State() != StateAwaitingCeremony {
		t.Fatalf("state %v", s.State())
	}
	flood := audit.Record{Identity: "spiffe://x/stranger", Method: "GetSealStatus", Outcome: audit.OutcomeDenied, Code: "PermissionDenied"}
	for i := 0; i < maxPending+150; i++ {
		_ = s.record(context.Background(), flood)
	}
	late := audit.Record{Identity: "spiffe://x/relay", Role: "relay", Method: "InitCeremony", Outcome: audit.OutcomeDenied, Code: "PermissionDenied"}
	_ = s.record(context.Background(), late)
	for i := 0; i < maxOverflowKinds+3; i++ {
		_ = s.record(context.Background(), audit.Record{Identity: fmt.Sprintf("spiffe://x/%d", i), Method: "GetShare", Outcome: audit.OutcomeDenied, Code: "PermissionDenied"})
	}
	a := &memAuditor{}
	if err := s.SetAuditor(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	total := 0
	lateSeen := false
	for _, r := range a.recs {
		n := 1
		if i := strings.Index(r.Detail, " "+overflowDetail+" "); i > 0 {
			if n, err = strconv.Atoi(r.Detail[:i]); err != nil {
				t.Fatalf("summary %q", r.Detail)
			}
		}
		total += n
		lateSeen = lateSeen || (r.Identity == late.Identity && r.Method == "InitCeremony" && r.Role == "relay")
	}
	if want := maxPending + 150 + 1 + maxOverflowKinds + 3; total != want || !lateSeen {
		t.Fatalf("%d calls on the record in %d records (the late refusal seen: %v), want %d", total, len(a.recs), lateSeen, want)
	}
	if len(a.recs) > maxPending+maxOverflowKinds+1 {
		t.Fatalf("%d records: the summaries are not bounded", len(a.recs))
	}
}
