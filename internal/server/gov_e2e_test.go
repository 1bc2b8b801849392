package server_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/testenv"
)

// govTimeLock is the time-lock in these tests: long enough to observe,
// short enough to wait out.
const govTimeLock = 2 * time.Second

type officer struct {
	name   string
	signer crypto.Signer
	der    []byte
}

func newOfficers(t *testing.T, names ...string) []officer {
	t.Helper()
	var out []officer
	for i, n := range names {
		var s crypto.Signer
		var err error
		if i%2 == 0 {
			_, s, err = ed25519.GenerateKey(rand.Reader)
		} else {
			s, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKIXPublicKey(s.Public())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, officer{name: n, signer: s, der: der})
	}
	return out
}

// govEnv is a running custodyd with governance settings for tests, a
// second relay ("relay2") and three officers' keys.
type govEnv struct {
	*testenv.Env
	officers []officer
	relay    string // identity of the relay
	relay2   string
}

func startGov(t *testing.T, mutate func(*testenv.Env, *config.Config)) *govEnv {
	t.Helper()
	e := testenv.Start(t, testenv.Settings{
		ExtraClients: []string{"relay2"},
		Mutate: func(e *testenv.Env, c *config.Config) {
			c.Identities = append(c.Identities, config.IdentityConfig{Name: "dev-relay2", Role: config.Role("relay"), URI: e.Cert["relay2"].Identity})
			c.Governance.TimeLock = govTimeLock
			c.Governance.ProposalTTL = time.Hour
			if mutate != nil {
				mutate(e, c)
			}
		},
		Daemon: daemonOpts(),
	})
	return &govEnv{Env: e, officers: newOfficers(t, "alice", "bob", "carol"), relay: e.Cert["relay"].Identity, relay2: e.Cert["relay2"].Identity}
}

func (g *govEnv) gov(t *testing.T, client string) custodyv1.GovernanceServiceClient {
	return custodyv1.NewGovernanceServiceClient(g.Dial(t, client))
}

// ceremony runs InitCeremony as the operator: key "msgs" (AES-GCM) with
// encrypt/decrypt/datakey/unwrap granted to relay (volume per hour), and
// datakey/encrypt to relay2 with a large budget.
func (g *govEnv) ceremony(t *testing.T, volume int64) *custodyv1.CeremonyTranscript {
	t.Helper()
	tr, err := g.gov(t, "operator").InitCeremony(ctx(t), g.ceremonyRequest(volume))
	if err != nil {
		t.Fatalf("ceremony: %v", err)
	}
	return tr
}

func (g *govEnv) ceremonyRequest(volume int64) *custodyv1.InitCeremonyRequest {
	req := &custodyv1.InitCeremonyRequest{Threshold: 2,
		Keys: []*custodyv1.CeremonyKey{{Name: "msgs", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM}, {Name: "spare", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM}},
		Grants: []*custodyv1.Grant{
			{Id: "relay-msgs", Identity: g.relay, Key: "msgs", Operations: []string{"encrypt", "decrypt", "datakey", "unwrap"}, AllowPlaintext: true},
			{Id: "relay2-msgs", Identity: g.relay2, Key: "msgs", Operations: []string{"encrypt", "datakey"}, AllowPlaintext: true},
		},
		Budgets: []*custodyv1.Budget{
			{Identity: g.relay, Key: "msgs", Rate: 10000, Burst: 100, Volume: volume, Window: durationpb.New(time.Hour)},
			{Identity: g.relay2, Key: "msgs", Rate: 10000, Burst: 100, Volume: 100000, Window: durationpb.New(time.Hour)},
		},
	}
	for _, o := range g.officers {
		req.Officers = append(req.Officers, &custodyv1.Officer{Name: o.name, PublicKeyDer: o.der})
	}
	return req
}

// propose submits a payload as the operator and returns the proposal.
func (g *govEnv) propose(t *testing.T, pl quorum.Payload, ttl time.Duration) quorum.Proposal {
	t.Helper()
	p, err := quorum.NewProposal(pl, g.Cert["operator"].Identity, time.Now(), ttl)
	p.Vault = g.D.Gov.VaultID()
	if err != nil {
		t.Fatal(err)
	}
	canon, err := p.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	info, err := g.gov(t, "operator").Propose(ctx(t), &custodyv1.ProposeRequest{CanonicalProposal: canon})
	if err != nil {
		t.Fatalf("propose %s: %v", p.Kind, err)
	}
	if d, _ := p.Digest(); info.GetDigest() != d.String() {
		t.Fatalf("server digest %s, local %s", info.GetDigest(), d)
	}
	return p
}

func approvalBy(t *testing.T, o officer, p quorum.Proposal) []byte {
	t.Helper()
	d, err := p.Digest()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := quorum.SignApproval(o.signer, d)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

func (g *govEnv) approve(t *testing.T, client string, o officer, p quorum.Proposal) (*custodyv1.ProposalInfo, error) {
	return g.gov(t, client).Approve(ctx(t), &custodyv1.ApproveRequest{Id: p.ID, Officer: o.name, Signature: approvalBy(t, o, p)})
}

// pass approves p with the first two officers (M = 2).
func (g *govEnv) pass(t *testing.T, p quorum.Proposal) *custodyv1.ProposalInfo {
	t.Helper()
	var info *custodyv1.ProposalInfo
	for _, o := range g.officers[:2] {
		var err error
		if info, err = g.approve(t, "officer", o, p); err != nil {
			t.Fatalf("approve %s by %s: %v", p.ID, o.name, err)
		}
	}
	return info
}

// waitState polls a proposal until it reaches want.
func (g *govEnv) waitState(t *testing.T, id string, want custodyv1.ProposalState) *custodyv1.ProposalInfo {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		info, err := g.gov(t, "auditor").GetProposal(ctx(t), &custodyv1.GetProposalRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		if info.GetState() == want {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("proposal %s is %v (%s), want %v", id, info.GetState(), info.GetResult(), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCeremonyYieldsSignedTranscriptWithSafeAttributesAndRunsOnce(t *testing.T) {
	g := startGov(t, nil)
	tr := g.ceremony(t, 100)
	got, err := quorum.VerifyTranscript(tr.GetJson(), tr.GetSignature(), tr.GetAuditPublicKeyDer())
	if err != nil {
		t.Fatalf("transcript does not verify: %v", err)
	}
	if got.Threshold != 2 || len(got.Officers) != 3 || len(got.Keys) != 2 || len(got.Grants) != 2 || len(got.Budgets) != 2 {
		t.Fatalf("transcript records %d of %d officers, %d keys, %d grants, %d budgets", got.Threshold, len(got.Officers), len(got.Keys), len(got.Grants), len(got.Budgets))
	}
	for _, k := range got.Keys {
		if !k.Attributes.Safe() || k.HSMID == "" {
			t.Errorf("key %s recorded with unsafe attributes %+v", k.Name, k.Attributes)
		}
	}
	if !strings.Contains(tr.GetText(), got.Officers[0].Fingerprint) {
		t.Error("text transcript lacks the officers' fingerprints")
	}
	tampered := bytes.Replace(tr.GetJson(), []byte(`"threshold": 2`), []byte(`"threshold": 1`), 1)
	if _, err := quorum.VerifyTranscript(tampered, tr.GetSignature(), tr.GetAuditPublicKeyDer()); err == nil {
		t.Fatal("an edited transcript verified")
	}
	_, err = g.gov(t, "officer").InitCeremony(ctx(t), g.ceremonyRequest(100))
	wantCode(t, err, codes.FailedPrecondition, "second ceremony")
	again, err := g.gov(t, "auditor").GetCeremonyTranscript(ctx(t), &custodyv1.GetCeremonyTranscriptRequest{})
	if err != nil || !bytes.Equal(again.GetJson(), tr.GetJson()) {
		t.Fatalf("stored transcript differs or missing: %v", err)
	}
	// The transcript and ceremony survive a restart.
	g.Restart(t)
	_, err = g.gov(t, "operator").InitCeremony(ctx(t), g.ceremonyRequest(100))
	wantCode(t, err, codes.FailedPrecondition, "ceremony after restart")
}

func TestCeremonyRefusesRelayCallerAndMEqualOneWithoutDev(t *testing.T) {
	g := startGov(t, func(_ *testenv.Env, c *config.Config) {
		c.Dev, c.Governance.TimeLock, c.Governance.ProposalTTL = false, time.Hour, 2*time.Hour
		c.Keys.DestroyWaitMin = 24 * time.Hour
		for _, g := range c.Grants { // outside dev every grant needs a budget
			for _, k := range g.Keys {
				c.Budgets = append(c.Budgets, config.BudgetConfig{Identity: g.Identity, Key: k, Rate: 10, Burst: 10, Volume: 100, Window: time.Hour})
			}
		}
	})
	_, err := g.gov(t, "relay").InitCeremony(ctx(t), g.ceremonyRequest(10))
	wantCode(t, err, codes.PermissionDenied, "relay runs ceremony")
	req := g.ceremonyRequest(10)
	req.Threshold, req.AllowDev = 1, true
	_, err = g.gov(t, "operator").InitCeremony(ctx(t), req)
	wantCode(t, err, codes.InvalidArgument, "M=1 on a production instance")
	if _, err := g.Keys(t, "operator").GetKey(ctx(t), &custodyv1.GetKeyRequest{Name: "msgs"}); code(err) != codes.NotFound {
		t.Fatalf("a refused ceremony created keys: %v", err)
	}
}

func TestCeremonyFromYAMLWithCustodyctlIsVerifiedOffline(t *testing.T) {
	if testing.Short() {
		t.Skip("builds custodyctl")
	}
	bin := custodyctl(t)
	g := startGov(t, nil)
	dir := t.TempDir()
	var yaml strings.Builder
	yaml.WriteString("threshold: 2\nofficers:\n")
	for _, o := range g.officers {
		f := filepath.Join(dir, o.name+".pub")
		if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: o.der}), 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&yaml, "  - {name: %s, public_key: %s.pub}\n", o.name, o.name)
	}
	fmt.Fprintf(&yaml, `keys:
  - {name: msgs, purpose: encrypt-aes256-gcm, description: relay messages}
grants:
  - {id: relay-msgs, identity: %q, key: msgs, operations: [encrypt, decrypt], allow_plaintext: true}
budgets:
  - {identity: %q, key: msgs, rate: 100, burst: 10, volume: 1000, window: 24h}
`, g.relay, g.relay)
	cfgFile := filepath.Join(dir, "ceremony.yaml")
	if err := os.WriteFile(cfgFile, []byte(yaml.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "transcript")
	run := func(args ...string) (string, int) {
		c := g.Cert["operator"]
		cmd := exec.Command(bin, append([]string{"--addr", g.Addr, "--ca", g.CAFile, "--cert", c.CertFile, "--tls-key", c.KeyFile}, args...)...)
		cmd.Env = append(os.Environ(), "CUSTODY_ADDR=", "CUSTODY_CA=", "CUSTODY_CERT=", "CUSTODY_KEY=", "CUSTODY_OUTPUT=")
		b, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(b), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(b), 0
	}
	if o, rc := run("ceremony", "init", "--config", cfgFile, "--transcript-out", out); rc != 0 {
		t.Fatalf("ceremony init: exit %d\n%s", rc, o)
	}
	o, rc := run("ceremony", "verify", "--dir", out)
	if rc != 0 || !strings.Contains(o, "signature:  OK") || !strings.Contains(o, "2 of 3") {
		t.Fatalf("ceremony verify: exit %d\n%s", rc, o)
	}
	doc := filepath.Join(out, "transcript.json")
	b, _ := os.ReadFile(doc)
	if err := os.WriteFile(doc, bytes.Replace(b, []byte("msgs"), []byte("msgz"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if o, rc := run("ceremony", "verify", "--dir", out); rc == 0 {
		t.Fatalf("verify accepted an edited transcript:\n%s", o)
	}
	if o, rc := run("ceremony", "init", "--config", cfgFile, "--transcript-out", filepath.Join(dir, "again")); rc == 0 || !strings.Contains(o, "FailedPrecondition") {
		t.Fatalf("second ceremony init: exit %d\n%s", rc, o)
	}
}

func TestQuorumTwoOfThreeRefusesOperatorForgeryReplayDuplicateAndExpiry(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	alice, bob, carol := g.officers[0], g.officers[1], g.officers[2]

	rot := g.propose(t, quorum.RotateKey{Name: "msgs"}, time.Hour)
	other := g.propose(t, quorum.RotateKey{Name: "spare"}, time.Hour)
	primary := func() uint32 {
		k, err := g.Keys(t, "operator").GetKey(ctx(t), &custodyv1.GetKeyRequest{Name: "msgs"})
		if err != nil {
			t.Fatal(err)
		}
		return k.GetPrimaryVersion()
	}

	info, err := g.approve(t, "officer", alice, rot)
	if err != nil || info.GetState() != custodyv1.ProposalState_PROPOSAL_PENDING || primary() != 1 {
		t.Fatalf("one approval: %v %v, primary %d", info.GetState(), err, primary())
	}
	_, err = g.approve(t, "operator", bob, rot)
	wantCode(t, err, codes.PermissionDenied, "operator approves with an officer's signature")
	_, err = g.gov(t, "officer").Approve(ctx(t), &custodyv1.ApproveRequest{Id: rot.ID, Officer: bob.name, Signature: approvalBy(t, carol, rot)})
	wantCode(t, err, codes.PermissionDenied, "carol's signature presented as bob's")
	_, err = g.gov(t, "officer").Approve(ctx(t), &custodyv1.ApproveRequest{Id: rot.ID, Officer: bob.name, Signature: approvalBy(t, bob, other)})
	wantCode(t, err, codes.PermissionDenied, "bob's approval of another proposal replayed")
	_, err = g.approve(t, "officer", alice, rot)
	wantCode(t, err, codes.AlreadyExists, "alice approves twice")
	if primary() != 1 {
		t.Fatal("refused approvals executed the rotation")
	}

	info, err = g.approve(t, "officer", bob, rot)
	if err != nil || info.GetState() != custodyv1.ProposalState_PROPOSAL_EXECUTED || primary() != 2 {
		t.Fatalf("two approvals: %v %v (%s), primary %d", info.GetState(), err, info.GetResult(), primary())
	}
	_, err = g.approve(t, "officer", carol, rot)
	wantCode(t, err, codes.FailedPrecondition, "approval of an executed proposal")

	short := g.propose(t, quorum.RotateKey{Name: "msgs"}, 1500*time.Millisecond)
	if _, err := g.approve(t, "officer", alice, short); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1600 * time.Millisecond)
	_, err = g.approve(t, "officer", bob, short)
	wantCode(t, err, codes.FailedPrecondition, "approval after expiry")
	if primary() != 2 {
		t.Fatal("an expired proposal executed")
	}
	// Direct key changes are refused for everyone once governed.
	_, err = g.Keys(t, "operator").RotateKey(ctx(t), &custodyv1.RotateKeyRequest{Name: "msgs"})
	wantCode(t, err, codes.FailedPrecondition, "direct rotate after the ceremony")
	_, err = g.Keys(t, "operator").CreateKey(ctx(t), &custodyv1.CreateKeyRequest{Name: "new", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM})
	wantCode(t, err, codes.FailedPrecondition, "direct create after the ceremony")
	// The refusal names a command that exists.
	if !strings.Contains(status.Convert(err).Message(), "(custodyctl proposal create create-key)") {
		t.Errorf("direct create refused with %q, want it to name `custodyctl proposal create create-key`", status.Convert(err).Message())
	}
}

func metric(t *testing.T, g *govEnv, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + g.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+" ") {
			return strings.TrimPrefix(l, name+" ")
		}
	}
	return ""
}

func TestWideningProposalWaitsOutTimeLockAndAVetoCancelsIt(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	grant := func(id string) quorum.AddGrant {
		return quorum.AddGrant{Grant: policy.Grant{ID: id, Identity: g.relay, Key: "spare", Operations: []policy.Op{policy.OpEncrypt}, AllowPlaintext: true}}
	}
	hasGrant := func(id string) bool {
		r, err := g.gov(t, "auditor").ListGrants(ctx(t), &custodyv1.ListGrantsRequest{Key: "spare"})
		if err != nil {
			t.Fatal(err)
		}
		for _, gr := range r.GetGrants() {
			if gr.GetId() == id {
				return true
			}
		}
		return false
	}
	p := g.propose(t, grant("relay-spare"), time.Hour)
	info := g.pass(t, p)
	if info.GetState() != custodyv1.ProposalState_PROPOSAL_TIME_LOCKED || !info.GetWidening() || hasGrant("relay-spare") {
		t.Fatalf("approved widening proposal: %v, grant present %v", info.GetState(), hasGrant("relay-spare"))
	}
	if v := metric(t, g, "custody_governance_pending_timelocks"); v != "1" {
		t.Fatalf("pending time-lock metric = %q, want 1", v)
	}
	g.waitState(t, p.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)
	if !hasGrant("relay-spare") {
		t.Fatal("executed add-grant did not install the grant")
	}
	if _, err := g.Crypto(t, "relay").Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "spare", Plaintext: []byte("x")}); code(err) != codes.PermissionDenied {
		t.Fatalf("grant without a budget allowed use: %v", err)
	}

	vetoed := g.propose(t, grant("relay-spare-2"), time.Hour)
	g.pass(t, vetoed)
	d, _ := vetoed.Digest()
	sig, _ := quorum.SignVeto(g.officers[2].signer, d)
	_, err := g.gov(t, "operator").Veto(ctx(t), &custodyv1.VetoRequest{Id: vetoed.ID, Officer: g.officers[2].name, Signature: sig})
	wantCode(t, err, codes.PermissionDenied, "operator vetoes")
	info, err = g.gov(t, "officer").Veto(ctx(t), &custodyv1.VetoRequest{Id: vetoed.ID, Officer: g.officers[2].name, Signature: sig})
	if err != nil || info.GetState() != custodyv1.ProposalState_PROPOSAL_VETOED {
		t.Fatalf("veto: %v %v", info.GetState(), err)
	}
	time.Sleep(govTimeLock + 500*time.Millisecond)
	if info := g.waitState(t, vetoed.ID, custodyv1.ProposalState_PROPOSAL_VETOED); info.GetExecutedTime() != nil || hasGrant("relay-spare-2") {
		t.Fatal("a vetoed proposal executed")
	}
}

func daemonOpts() daemon.Options { return daemon.Options{GovernanceInterval: 50 * time.Millisecond} }

// TestGrantProposalForAnUnconfiguredIdentityIsRefused: officers are never
// asked to sign a grant that could not apply.
func TestGrantProposalForAnUnconfiguredIdentityIsRefused(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	for _, who := range []string{"spiffe://elsewhere.example/relay-9", g.Cert["operator"].Identity} {
		p, err := quorum.NewProposal(quorum.AddGrant{Grant: policy.Grant{ID: "g-x", Identity: who, Key: "spare",
			Operations: []policy.Op{policy.OpDecrypt}}}, g.Cert["operator"].Identity, time.Now(), time.Hour)
		p.Vault = g.D.Gov.VaultID()
		if err != nil {
			t.Fatal(err)
		}
		canon, err := p.CanonicalBytes()
		if err != nil {
			t.Fatal(err)
		}
		_, err = g.gov(t, "operator").Propose(ctx(t), &custodyv1.ProposeRequest{CanonicalProposal: canon})
		wantCode(t, err, codes.InvalidArgument, "grant to "+who)
	}
}

// TestProductionVaultIsGovernedFromFirstStart: outside dev mode nothing is
// possible before the key ceremony: no direct key changes, and grants in the
// config do not apply.
func TestProductionVaultIsGovernedFromFirstStart(t *testing.T) {
	g := startGov(t, func(_ *testenv.Env, c *config.Config) {
		c.Dev, c.Governance.TimeLock, c.Governance.ProposalTTL = false, time.Hour, 2*time.Hour
		c.Keys.DestroyWaitMin = 24 * time.Hour
	})
	_, err := g.Keys(t, "operator").CreateKey(ctx(t), &custodyv1.CreateKeyRequest{Name: "direct", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM})
	wantCode(t, err, codes.FailedPrecondition, "direct key creation before the ceremony")
	_, err = g.Crypto(t, "relay").Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("x")})
	wantCode(t, err, codes.PermissionDenied, "config grant on a production vault")
	// The ceremony is what opens the vault.
	g.ceremony(t, 100)
	if _, err := g.Crypto(t, "relay").Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")}); err != nil {
		t.Fatalf("relay after the ceremony: %v", err)
	}
}

// TestGrantsThatCanNeverReturnADataKeyAreRefusedWhenMade: a grant of
// datakey or unwrap with neither allow_plaintext nor recipient keys would
// store data keys that no fetch, unwrap or Seal could ever get back. The
// ceremony and an add-grant proposal refuse it, naming both fixes.
func TestGrantsThatCanNeverReturnADataKeyAreRefusedWhenMade(t *testing.T) {
	g := startGov(t, nil)
	req := g.ceremonyRequest(100)
	req.Grants[0] = &custodyv1.Grant{Id: "relay-msgs", Identity: g.relay, Key: "msgs", Operations: []string{"datakey", "unwrap"},
		ContextMatch: map[string]string{"tenant": "acme"}}
	_, err := g.gov(t, "operator").InitCeremony(ctx(t), req)
	wantCode(t, err, codes.InvalidArgument, "ceremony with a grant that can never return a data key")
	for _, want := range []string{"grants[0]", "recipient_keys", "allow_plaintext"} {
		if !strings.Contains(status.Convert(err).Message(), want) {
			t.Errorf("ceremony refusal %q does not mention %q", status.Convert(err).Message(), want)
		}
	}
	// Nothing happened: the same vault still takes a usable ceremony.
	g.ceremony(t, 100)

	p, err := quorum.NewProposal(quorum.AddGrant{Grant: policy.Grant{ID: "g-unwrap", Identity: g.relay, Key: "spare",
		Operations: []policy.Op{policy.OpUnwrap}, ContextMatch: map[string]string{"tenant": "acme"}}}, g.Cert["operator"].Identity, time.Now(), time.Hour)
	p.Vault = g.D.Gov.VaultID()
	if err != nil {
		t.Fatal(err)
	}
	canon, err := p.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	_, err = g.gov(t, "operator").Propose(ctx(t), &custodyv1.ProposeRequest{CanonicalProposal: canon})
	wantCode(t, err, codes.InvalidArgument, "add-grant of unwrap without a way to receive the key")
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "recipient_keys") || !strings.Contains(msg, "allow_plaintext") {
		t.Errorf("proposal refusal %q does not name both fixes", msg)
	}
	list, err := g.gov(t, "operator").ListProposals(ctx(t), &custodyv1.ListProposalsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetProposals()) != 0 {
		t.Errorf("the refused proposal was recorded: %v", list.GetProposals())
	}
}
