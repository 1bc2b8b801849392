package server_test

// Tests for the holes the "one access path" review found. Each failed on the
// code before that change; each runs against a real custodyd (SoftHSM,
// bbolt, gRPC with mTLS on loopback).

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/types/known/durationpb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/testenv"
)

// Hole 1: a disclosure order allows the reads it names, never a delete.
func TestADisclosureOrderCannotDeleteAStoredDataKey(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	target := map[string]string{"tenant": "acme", "conversation": "7"}
	owner, investigator := dataKeys(t, g.Env, "relay"), dataKeys(t, g.Env, "relay2")
	if _, err := owner.StoreDataKey(ctx(t), generate("msgs", "conv-7", target)); err != nil {
		t.Fatal(err)
	}
	p := g.propose(t, quorum.DisclosureOrder{Order: policy.Order{CaseRef: "CASE-9", Key: "msgs", ContextMatch: target,
		Recipient: g.relay2, MaxUses: 1, NotAfter: time.Now().Add(time.Hour)}}, time.Hour)
	g.pass(t, p)
	g.waitState(t, p.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)

	_, err := investigator.DeleteDataKey(ctx(t), &custodyv1.DeleteDataKeyRequest{KeyName: "msgs", Id: "conv-7", Context: target})
	wantCode(t, err, codes.PermissionDenied, "delete under a disclosure order")
	if _, err := owner.FetchDataKey(ctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "msgs", Id: "conv-7", Context: target}); err != nil {
		t.Fatalf("the owner's key after the refused delete: %v", err)
	}
	orders, err := g.gov(t, "auditor").ListDisclosureOrders(ctx(t), &custodyv1.ListDisclosureOrdersRequest{IncludeEnded: true})
	if err != nil || len(orders.GetOrders()) != 1 || orders.GetOrders()[0].GetUsed() != 0 {
		t.Fatalf("the refused delete spent the order: %v %v", orders, err)
	}
	// The read it names still works, once.
	if _, err := investigator.FetchDataKey(ctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "msgs", Id: "conv-7", Context: target}); err != nil {
		t.Fatalf("fetch under the order: %v", err)
	}
}

// Hole 2: the transparency report counts every item of every path that
// yields plaintext or a data key, from records the real server wrote.
func TestTransparencyReportCountsEveryOpeningPathFromTheServersRecords(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{Mutate: testenv.Grant("relay", []string{"enc"},
		[]config.Operation{config.OpEncrypt, config.OpDecrypt, config.OpDataKey, config.OpUnwrap, config.OpRewrap}, true)})
	e.CreateKey(t, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c, dk := e.Crypto(t, "relay"), dataKeys(t, e, "relay")
	ct, err := c.Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("m")})
	if err != nil {
		t.Fatal(err)
	}
	dec := &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.GetCiphertext()}
	if _, err := c.BatchDecrypt(ctx(t), &custodyv1.BatchDecryptRequest{Items: []*custodyv1.DecryptRequest{dec, dec, dec}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Decrypt(ctx(t), dec); err != nil {
		t.Fatal(err)
	}
	gk, err := c.GenerateDataKey(ctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "enc"})
	if err != nil {
		t.Fatal(err)
	}
	unw := &custodyv1.UnwrapRequest{KeyName: "enc", WrappedKey: gk.GetWrappedKey()}
	if _, err := c.Unwrap(ctx(t), unw); err != nil {
		t.Fatal(err)
	}
	if _, err := c.BatchUnwrap(ctx(t), &custodyv1.BatchUnwrapRequest{Items: []*custodyv1.UnwrapRequest{unw, unw}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rewrap(ctx(t), &custodyv1.RewrapRequest{KeyName: "enc", WrappedKey: gk.GetWrappedKey()}); err != nil {
		t.Fatal(err)
	}
	if _, err := dk.StoreDataKey(ctx(t), generate("enc", "s1", nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := dk.FetchDataKey(ctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "enc", Id: "s1"}); err != nil {
		t.Fatal(err)
	}
	resp, err := custodyv1.NewAuditServiceClient(e.Dial(t, "auditor")).Report(ctx(t), &custodyv1.ReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var rep audit.TransparencyReport
	if err := json.Unmarshal(resp.GetJson(), &rep); err != nil {
		t.Fatal(err)
	}
	// 3 batch items + Decrypt + GenerateDataKey + Unwrap + 2 batch items +
	// Rewrap + Fetch.
	const want = 10
	for _, k := range rep.Keys {
		switch k.Name {
		case "enc":
			if k.Operations != want {
				t.Errorf("key enc: %d operations in the report, want %d (%+v)", k.Operations, want, rep.Keys)
			}
		case "":
			if k.Operations != 0 {
				t.Errorf("%d operations reported on no key", k.Operations)
			}
		}
	}
	if rep.Operations != want {
		t.Errorf("report total %d, want %d", rep.Operations, want)
	}
}

// Hole 3: nobody files a proposal in another's name.
func TestAProposalIsFiledOnlyInTheCallersOwnName(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	for _, claimed := range []string{"bob", g.Cert["officer"].Identity} {
		p, err := quorum.NewProposal(quorum.RotateKey{Name: "msgs"}, claimed, time.Now(), time.Hour)
		p.Vault = g.D.Gov.VaultID()
		if err != nil {
			t.Fatal(err)
		}
		canon, _ := p.CanonicalBytes()
		_, err = g.gov(t, "operator").Propose(ctx(t), &custodyv1.ProposeRequest{CanonicalProposal: canon})
		wantCode(t, err, codes.InvalidArgument, "operator proposing as "+claimed)
		if _, err := g.gov(t, "auditor").GetProposal(ctx(t), &custodyv1.GetProposalRequest{Id: p.ID}); code(err) != codes.NotFound {
			t.Fatalf("a refused proposal was recorded: %v", err)
		}
	}
	p := g.propose(t, quorum.RotateKey{Name: "msgs"}, time.Hour)
	info, err := g.gov(t, "auditor").GetProposal(ctx(t), &custodyv1.GetProposalRequest{Id: p.ID})
	if err != nil || info.GetProposer() != g.Cert["operator"].Identity {
		t.Fatalf("proposer %q (%v), want the operator's identity", info.GetProposer(), err)
	}
}

// Hole 4: a second ceremony marker planted on the token (by someone with the
// PIN) stops start-up instead of reading as "no ceremony".
func TestASecondCeremonyMarkerStopsStartUp(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	g.Stop(t)
	pin, err := os.ReadFile(g.Config.HSM.PINFile)
	if err != nil {
		t.Fatal(err)
	}
	lib, tokenLabel := softhsmModule(t, g.Config.HSM.URI)
	out, err := execCommand("pkcs11-tool", "--module", lib, "--token-label", tokenLabel, "--login", "--pin", strings.TrimSpace(string(pin)),
		"--keygen", "--key-type", "GENERIC:32", "--label", "custody:ceremony:v1", "--id", "0102")
	if err != nil {
		t.Fatalf("plant a marker: %v\n%s", err, out)
	}
	err = startExpectingRefusal(t, g.Env)
	if !strings.Contains(err.Error(), "ceremony marker unreadable") {
		t.Fatalf("start with two markers failed, but not for the marker: %v", err)
	}
}

// Hole 6: an HSM outage reaches clients as UNAVAILABLE (retryable), never as
// tampering.
func TestAnHSMOutageReachesClientsAsUnavailable(t *testing.T) {
	e := dkEnv(t)
	if _, err := dataKeys(t, e, "relay").StoreDataKey(ctx(t), generate("dk", "u1", nil)); err != nil {
		t.Fatal(err)
	}
	tokens := tokenDir(t, e)
	moved := tokens + ".away"
	if err := os.Rename(tokens, moved); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := os.Rename(moved, tokens); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(restore)
	_, err := dataKeys(t, e, "operator").ListDataKeyIds(ctx(t), &custodyv1.ListDataKeyIdsRequest{KeyName: "dk"})
	wantCode(t, err, codes.Unavailable, "listing while the token is gone")
	restore()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := dataKeys(t, e, "operator").ListDataKeyIds(ctx(t), &custodyv1.ListDataKeyIdsRequest{KeyName: "dk"})
		if err == nil {
			break
		}
		if code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("after the token is back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Hole 7: a store rolled back to an older copy (an older grant set, an
// unfrozen relay) refuses to serve, naming both revisions.
func TestAStoreOlderThanTheAuditLogRefusesToServe(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	g.Stop(t)
	backup := g.Config.Store.Path + ".backup"
	copyFileT(t, g.Config.Store.Path, backup)
	g.Restart(t)
	p := g.propose(t, quorum.RemoveGrant{GrantID: "relay-msgs"}, time.Hour)
	g.pass(t, p)
	g.waitState(t, p.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)
	// Let a checkpoint record the store's new revision.
	waitFor(t, func() bool {
		cp, ok := g.D.Audit.LatestCheckpoint()
		return ok && cp.StoreRevision == g.D.Store.Anchor().Revision
	})
	g.Stop(t)
	copyFileT(t, backup, g.Config.Store.Path)
	err := startExpectingRefusal(t, g.Env)
	if !strings.Contains(err.Error(), "older than the audit log") || !strings.Contains(err.Error(), "recorded revision") {
		t.Fatalf("start on a rolled-back store failed, but not for that: %v", err)
	}
}

// Hole 8: one context digest, keyed by the HSM; auditors ask the vault for
// a context's digest through an audited, auditor-only call.
func TestContextDigestsAreKeyedAndOnlyAuditorsCanMatchThem(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{Mutate: testenv.Grant("relay", []string{"enc"}, []config.Operation{config.OpEncrypt}, false)})
	e.CreateKey(t, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c := map[string]string{"user": "42"}
	if _, err := e.Crypto(t, "relay").Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("m"), Context: c}); err != nil {
		t.Fatal(err)
	}
	var recorded []byte
	_ = e.D.Audit.Read(ctx(t), audit.Filter{Method: "Encrypt"}, func(r audit.Record) error { recorded = r.ContextDigest; return nil })
	canon, _ := keys.CanonicalContext(c)
	unkeyed := sha256.Sum256(canon)
	if len(recorded) != 32 || bytes.Equal(recorded, unkeyed[:]) {
		t.Fatalf("recorded digest %x is missing or the unkeyed SHA-256 a guess could confirm", recorded)
	}
	got, err := custodyv1.NewAuditServiceClient(e.Dial(t, "auditor")).DigestContext(ctx(t), &custodyv1.DigestContextRequest{Context: c})
	if err != nil || !bytes.Equal(got.GetDigest(), recorded) {
		t.Fatalf("auditor's digest %x (%v), recorded %x", got.GetDigest(), err, recorded)
	}
	for _, who := range []string{"relay", "operator", "officer"} {
		_, err := custodyv1.NewAuditServiceClient(e.Dial(t, who)).DigestContext(ctx(t), &custodyv1.DigestContextRequest{Context: c})
		wantCode(t, err, codes.PermissionDenied, who+" asking for a digest")
	}
	n := 0
	_ = e.D.Audit.Read(ctx(t), audit.Filter{Method: "DigestContext"}, func(r audit.Record) error { n++; return nil })
	if n != 4 {
		t.Fatalf("%d DigestContext calls on the record, want 4", n)
	}
}

// Hole 10: a 255-byte id of multi-byte characters is on the record (cut on
// a character boundary), and every governance change has its record before
// it is made — execution by a time-lock included.
func TestGovernanceActionsAreOnTheRecordWhateverTheirIDs(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	p, err := quorum.NewProposal(quorum.RotateKey{Name: "msgs"}, g.Cert["operator"].Identity, time.Now(), time.Hour)
	p.Vault = g.D.Gov.VaultID()
	if err != nil {
		t.Fatal(err)
	}
	p.ID = strings.Repeat("€", 85) // 255 bytes
	canon, err := p.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.gov(t, "operator").Propose(ctx(t), &custodyv1.ProposeRequest{CanonicalProposal: canon}); err != nil {
		t.Fatalf("propose: %v", err)
	}
	info := g.pass(t, p)
	if info.GetState() != custodyv1.ProposalState_PROPOSAL_EXECUTED {
		t.Fatalf("rotation proposal is %v", info.GetState())
	}
	var propose, approve, intents int
	_ = g.D.Audit.Read(ctx(t), audit.Filter{}, func(r audit.Record) error {
		switch {
		case r.Method == "Propose" && r.Outcome == audit.OutcomeOK:
			propose++
		case r.Method == "Approve" && r.Outcome == audit.OutcomeOK:
			approve++
		}
		if r.Outcome == audit.OutcomeIntent && strings.Contains(r.Detail, "€") {
			intents++
		}
		return nil
	})
	if propose != 1 || approve != 2 || intents < 4 { // propose, 2 approvals, execute
		t.Fatalf("records: %d propose, %d approve, %d intents naming the proposal", propose, approve, intents)
	}
	// A widening proposal executed by the time-lock loop has its own record.
	wide := g.propose(t, quorum.AddGrant{Grant: policy.Grant{ID: "relay2-spare", Identity: g.relay2, Key: "spare", Operations: []policy.Op{policy.OpEncrypt}}}, time.Hour)
	g.pass(t, wide)
	g.waitState(t, wide.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)
	found := false
	_ = g.D.Audit.Read(ctx(t), audit.Filter{Identity: "custodyd"}, func(r audit.Record) error {
		found = found || (r.Method == "governance.execute" && strings.Contains(r.Detail, wide.ID))
		return nil
	})
	if !found {
		t.Fatal("the time-lock execution has no record of its own")
	}
	if _, err := audit.Verify(g.Config.Audit.Dir, g.D.AuditPK, nil); err != nil {
		t.Fatalf("log: %v", err)
	}
}

// Hole 11: a proposal that narrowed when it was made but widens by the time
// it reaches its threshold waits out the time-lock.
func TestWideningIsDecidedAgainstTheStateInForceAtExecution(t *testing.T) {
	g := startGov(t, func(e *testenv.Env, c *config.Config) {
		c.Governance.TimeLock, c.Governance.ProposalTTL = time.Hour, 3*time.Hour
	})
	g.ceremony(t, 100)
	budget := func(vol int64) policy.Budget {
		return policy.Budget{Rate: 10000, Burst: min(100, int(vol)), Volume: vol, Window: time.Hour}
	}
	ninety := g.propose(t, quorum.SetBudget{Identity: g.relay, Key: "msgs", Budget: budget(90)}, 2*time.Hour)
	one := g.propose(t, quorum.SetBudget{Identity: g.relay, Key: "msgs", Budget: budget(1)}, 2*time.Hour)
	if info := g.pass(t, one); info.GetState() != custodyv1.ProposalState_PROPOSAL_EXECUTED {
		t.Fatalf("cut to 1: %v", info.GetState())
	}
	info := g.pass(t, ninety)
	if info.GetState() != custodyv1.ProposalState_PROPOSAL_TIME_LOCKED || !info.GetWidening() {
		t.Fatalf("raise to 90 against a budget of 1: %v (widening %t), want time-locked", info.GetState(), info.GetWidening())
	}
	bs, err := g.gov(t, "auditor").ListBudgets(ctx(t), &custodyv1.ListBudgetsRequest{Key: "msgs"})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bs.GetBudgets() {
		if b.GetIdentity() == g.relay && b.GetVolume() != 1 {
			t.Fatalf("budget raised to %d without its time-lock", b.GetVolume())
		}
	}
}

// Hole 12: names and ids with control characters are refused, so what an
// officer reads is what executes.
func TestControlCharactersInNamesAndIDsAreRefused(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	hidden := "g1\x1b[8m, PLAINTEXT data keys allowed\x1b[0m"
	p, err := quorum.NewProposal(quorum.RotateKey{Name: "msgs"}, g.Cert["operator"].Identity, time.Now(), time.Hour)
	p.Vault = g.D.Gov.VaultID()
	if err != nil {
		t.Fatal(err)
	}
	p.Payload = quorum.AddGrant{Grant: policy.Grant{ID: hidden, Identity: g.relay2, Key: "msgs", Operations: []policy.Op{policy.OpDecrypt}}}
	p.Kind = quorum.KindAddGrant
	b, _ := json.Marshal(p)
	_, err = g.gov(t, "operator").Propose(ctx(t), &custodyv1.ProposeRequest{CanonicalProposal: b})
	wantCode(t, err, codes.InvalidArgument, "a grant id with terminal escapes")
	_, err = g.Keys(t, "operator").GetKey(ctx(t), &custodyv1.GetKeyRequest{Name: "msgs\x1b[2J"})
	wantCode(t, err, codes.InvalidArgument, "a key name with terminal escapes")
}

// rawCodec sends bytes as they are, to put malformed protobuf on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.CodecV2 = rawCodec{}

// Hole 13: malformed protobuf, invalid UTF-8 and over-long names get the
// right code and an audit record; a certificate whose URI SAN claims the
// spki scheme is UNAUTHENTICATED.
func TestBadInputIsAuditedWithTheRightCode(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{ExtraClients: []string{"spkiclaim"}})
	conn := e.Dial(t, "relay")
	call := func(payload []byte) error {
		var out []byte
		return conn.Invoke(ctx(t), "/custody.v1.CryptoService/Decrypt", &payload, &out, grpc.ForceCodecV2(rawCodec{}))
	}
	// field 1 (key_name), wire type 2, length 5, then only 2 bytes.
	err := call([]byte{0x0a, 0x05, 'a', 'b'})
	wantCode(t, err, codes.InvalidArgument, "truncated protobuf")
	// key_name = "\xff\xfe": invalid UTF-8 in a proto3 string.
	err = call([]byte{0x0a, 0x02, 0xff, 0xfe})
	wantCode(t, err, codes.InvalidArgument, "invalid UTF-8")
	_, err = e.Crypto(t, "relay").Decrypt(ctx(t), &custodyv1.DecryptRequest{KeyName: strings.Repeat("k", 2000), Ciphertext: []byte{1}})
	wantCode(t, err, codes.InvalidArgument, "2,000-byte key name")
	var invalid int
	_ = e.D.Audit.Read(ctx(t), audit.Filter{Identity: e.Cert["relay"].Identity, Method: "Decrypt"}, func(r audit.Record) error {
		if r.Code == codes.InvalidArgument.String() {
			invalid++
		}
		return nil
	})
	if invalid != 3 {
		t.Fatalf("%d InvalidArgument records for the three bad requests", invalid)
	}

	// A certificate from the vault's own CA whose URI SAN claims spki:.
	certFile, keyFile := issueClientCert(t, e, &url.URL{Scheme: "spki", Opaque: strings.Repeat("ab", 32)})
	tlsCfg, err := pki.ClientTLSConfig(e.CAFile, certFile, keyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = custodyv1.NewCryptoServiceClient(cc).Decrypt(ctx(t), &custodyv1.DecryptRequest{KeyName: "demo"})
	wantCode(t, err, codes.Unauthenticated, "spki: URI SAN")
}

// issueClientCert issues a client certificate with the given URI SAN from
// the test vault's CA.
func issueClientCert(t *testing.T, e *testenv.Env, uri *url.URL) (certFile, keyFile string) {
	t.Helper()
	caPEM, err := os.ReadFile(e.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(filepath.Dir(e.CAFile), "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := pem.Decode(caPEM)
	kb, _ := pem.Decode(keyPEM)
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		if caKey, err = x509.ParseECPrivateKey(kb.Bytes); err != nil {
			t.Fatal(err)
		}
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "claim"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{uri},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "c.pem"), filepath.Join(dir, "c-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

var _ = durationpb.New

// softhsmModule returns the SoftHSM library and the dev token's label.
func softhsmModule(t *testing.T, uri string) (lib, label string) {
	t.Helper()
	lib, err := daemon.SoftHSMLibrary()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(uri, "token=custody-dev") {
		t.Fatalf("unexpected token uri %s", uri)
	}
	return lib, "custody-dev"
}

// execCommand runs a tool against the test's token (SOFTHSM2_CONF is in the
// environment it inherits).
func execCommand(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// startExpectingRefusal starts custodyd on e's files and returns why it
// refused; it fails the test if custodyd starts.
func startExpectingRefusal(t *testing.T, e *testenv.Env) error {
	t.Helper()
	d, err := daemon.Start(ctx(t), e.Config, daemon.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil {
		d.Shutdown(ctx(t))
		t.Fatal("custodyd started")
	}
	return err
}

// tokenDir is the dev token's SoftHSM directory.
func tokenDir(t *testing.T, e *testenv.Env) string { return filepath.Join(e.Dir, "tokens") }

func copyFileT(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
