package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/governance"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/testenv"
)

// testCA is a CA made by the test (the site's second CA, or root's own).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "ca2"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return testCA{cert: c, key: k, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func devCA(t *testing.T, e *testenv.Env) testCA {
	t.Helper()
	cb, _ := os.ReadFile(e.CAFile)
	kb, err := os.ReadFile(filepath.Join(filepath.Dir(e.CAFile), "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	c, _ := x509.ParseCertificate(cblk.Bytes)
	k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: c, key: k.(*ecdsa.PrivateKey), pem: cb}
}

// issue returns a client certificate with URI SAN uri and a fresh key.
func (ca testCA) issue(t *testing.T, uri string) tls.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "client"},
		URIs: []*url.URL{u}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func clientTLS(t *testing.T, e *testenv.Env, cert tls.Certificate) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	b, _ := os.ReadFile(e.CAFile)
	pool.AppendCertsFromPEM(b)
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}}
}

func dialWith(t *testing.T, e *testenv.Env, cert tls.Certificate) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, e, cert))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// restEncrypt calls POST /v1/crypto/encrypt through the gateway.
func restEncrypt(t *testing.T, e *testenv.Env, cfg *tls.Config) int {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	resp, err := c.Post("https://"+e.GatewayAddr+"/v1/crypto/encrypt", "application/json", strings.NewReader(`{"key_name":"msgs","plaintext":"bQ=="}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func certSPKI(t *testing.T, file string) string {
	t.Helper()
	b, _ := os.ReadFile(file)
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// TestTrustFixedByTheCeremonyHoldsOverGRPCAndTheGateway: the client CAs the
// ceremony fixed and a grant pinned to the relay's key hold on both ways
// in (the REST gateway forwards the certificate's key and chain roots). A
// narrowing set-trust (ca2 removed) is in force at once: ca2's
// certificates are refused UNAUTHENTICATED (401 through the gateway) and
// audited, though the CA file custodyd loaded still holds ca2. A widening
// set-trust (a new relay) waits out the time-lock, then gives the relay its
// role. The old configuration is then refused at start, naming each
// difference; edited to match, it starts.
func TestTrustFixedByTheCeremonyHoldsOverGRPCAndTheGateway(t *testing.T) {
	ca2 := newTestCA(t)
	relay3 := "spiffe://custody.dev/relay3"
	var bundle string
	e := testenv.Start(t, testenv.Settings{Gateway: true, Daemon: daemonOpts(), Mutate: func(e *testenv.Env, c *config.Config) {
		c.Governance.TimeLock, c.Governance.ProposalTTL = govTimeLock, time.Hour
		bundle = filepath.Join(e.Dir, "client-cas.pem")
		b, _ := os.ReadFile(e.CAFile)
		os.WriteFile(bundle, append(b, ca2.pem...), 0o644)
		c.TLS.ClientCAFile = bundle
	}})
	g := &govEnv{Env: e, officers: newOfficers(t, "alice", "bob", "carol"), relay: e.Cert["relay"].Identity}
	req := g.ceremonyRequest(1000)
	req.Grants = req.Grants[:1]
	req.Grants[0].SpkiSha256 = certSPKI(t, e.Cert["relay"].CertFile)
	req.Budgets = req.Budgets[:1]
	tr, err := g.gov(t, "operator").InitCeremony(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tr.GetText(), "key pinned to sha256:"+req.Grants[0].SpkiSha256) || !strings.Contains(tr.GetText(), pki.CertFingerprint(ca2.cert)) {
		t.Fatalf("the transcript does not show the pin and the CAs:\n%s", tr.GetText())
	}

	relayCfg, err := pki.ClientTLSConfig(e.CAFile, e.Cert["relay"].CertFile, e.Cert["relay"].KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Crypto(t, "relay").Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")}); err != nil {
		t.Fatalf("the relay over gRPC: %v", err)
	}
	// The pin holds for each item of a batch too: the relay's own key passes.
	be, err := g.Crypto(t, "relay").BatchEncrypt(ctx(t), &custodyv1.BatchEncryptRequest{Items: []*custodyv1.EncryptRequest{
		{KeyName: "msgs", Plaintext: []byte("a")}, {KeyName: "msgs", Plaintext: []byte("b")}}})
	if err != nil {
		t.Fatalf("the relay's batch over gRPC: %v", err)
	}
	for i, r := range be.GetResults() {
		if r.GetError() != nil {
			t.Fatalf("item %d of the relay's batch under a key-pinned grant: %v", i, r.GetError())
		}
	}
	if code := restEncrypt(t, e, relayCfg); code != http.StatusOK {
		t.Fatalf("the relay through the gateway: %d", code)
	}
	// The relay's name on another key, from the site's own CA: the pinned
	// grant gives it nothing, either way in.
	imp := devCA(t, e).issue(t, g.relay)
	_, err = custodyv1.NewCryptoServiceClient(dialWith(t, e, imp)).Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
	wantCode(t, err, codes.PermissionDenied, "the relay's name on another key over gRPC")
	if code := restEncrypt(t, e, clientTLS(t, e, imp)); code != http.StatusForbidden {
		t.Fatalf("the relay's name on another key through the gateway: %d", code)
	}
	// ca2 (trusted by the ceremony) authenticates; its relay is an
	// impostor by key too.
	ca2Relay := ca2.issue(t, g.relay)
	_, err = custodyv1.NewCryptoServiceClient(dialWith(t, e, ca2Relay)).Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
	wantCode(t, err, codes.PermissionDenied, "ca2's relay before the set-trust")

	// Narrowing: ca2 removed (executes on its second approval).
	cur, err := e.Config.Trust()
	if err != nil {
		t.Fatal(err)
	}
	narrow := cur.Trust.Clone()
	narrow.ClientCAs = []string{pki.CertFingerprint(devCA(t, e).cert)}
	p := g.propose(t, quorum.SetTrust{Trust: narrow}, time.Hour)
	if info := g.pass(t, p); info.GetState() != custodyv1.ProposalState_PROPOSAL_EXECUTED {
		t.Fatalf("narrowing set-trust: %v %s", info.GetState(), info.GetResult())
	}
	_, err = custodyv1.NewCryptoServiceClient(dialWith(t, e, ca2Relay)).Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
	wantCode(t, err, codes.Unauthenticated, "ca2's relay after ca2 was removed")
	if code := restEncrypt(t, e, clientTLS(t, e, ca2Relay)); code != http.StatusUnauthorized {
		t.Fatalf("ca2's relay through the gateway after ca2 was removed: %d", code)
	}
	var refused int
	_ = e.D.Audit.Read(ctx(t), audit.Filter{Identity: g.relay, Method: "Encrypt"}, func(r audit.Record) error {
		if r.Code == "Unauthenticated" && strings.Contains(r.Detail, "does not trust") {
			refused++
		}
		return nil
	})
	if refused != 2 {
		t.Errorf("%d audit records of ca2's refused relay, want 2 (gRPC and gateway)", refused)
	}

	// Widening: a new relay identity waits out the time-lock.
	wide := narrow.Clone()
	wide.Roles[relay3] = policy.RoleRelay
	p = g.propose(t, quorum.SetTrust{Trust: wide}, time.Hour)
	if info := g.pass(t, p); info.GetState() != custodyv1.ProposalState_PROPOSAL_TIME_LOCKED || !info.GetWidening() {
		t.Fatalf("widening set-trust: %v widening=%t", info.GetState(), info.GetWidening())
	}
	g.waitState(t, p.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)
	if r, ok := e.D.Gov.Snapshot().Role(relay3); !ok || r != policy.RoleRelay {
		t.Fatal("relay3 has no role after the set-trust executed")
	}

	// The config as it was: refused, naming each difference.
	e.Stop(t)
	err = startExpectingRefusal(t, e)
	if !errors.Is(err, governance.ErrTrustMismatch) {
		t.Fatalf("start on the old config: %v", err)
	}
	for _, want := range []string{"tls.client_ca_file: ceremony does not trust CA sha256:" + pki.CertFingerprint(ca2.cert) + ", config adds it",
		"identities[" + relay3 + "].role: ceremony relay, config (none)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not name %q:\n%v", want, err)
		}
	}
	// Edited to match, it starts.
	os.WriteFile(bundle, devCA(t, e).pem, 0o644)
	e.Config.Identities = append(e.Config.Identities, config.IdentityConfig{Name: "relay3", Role: config.Role("relay"), URI: relay3})
	e.Restart(t)
	if _, err := g.Crypto(t, "relay").Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")}); err != nil {
		t.Fatalf("the relay after the config was edited to match: %v", err)
	}
	if got := e.D.AuditMarkStatus(); !got.GetOnToken() || got.GetSeq() == 0 {
		t.Errorf("audit mark status %v", got)
	}
}
