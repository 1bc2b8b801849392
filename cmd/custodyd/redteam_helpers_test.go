package main

// The red team's production vault: custodyd --config (no --dev, no PIN
// source), a real 2-of-3 ceremony run with custodyctl, restarted sealed and
// unsealed by two officers, mTLS on gRPC and on the REST gateway. Besides
// the roles of the sealed tests it has a second tenant relay ("relay-b"),
// carol's own officer certificate ("officer-c"), a certificate from the
// vault's CA that has no role ("stranger") and a whole PKI under another CA
// ("other"), so the attackers of the red team brief each have what they
// would have: a compromised relay its cert and key, a coerced officer one
// officer key and the CLI, an outsider a certificate from another CA or
// none.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/pki"
)

// redRoles are the client certificates of the red team vault.
var redRoles = []string{"relay", "relay-b", "operator", "officer", "officer-c", "auditor", "stranger"}

// Tenants of the shared key: each relay is granted it only under its own
// tenant context.
var (
	tenantA = map[string]string{"tenant": "a"}
	tenantB = map[string]string{"tenant": "b"}
)

// redVault is a production vault under attack.
type redVault struct {
	*vault
	gwAddr   string
	other    *pki.DevPKI // a PKI under another CA
	pubFile  string      // the audit public key (PEM), fetched once serving
	anchors  string      // off-box anchor file of checkpoints
	identity map[string]string
}

// redCeremony is the ceremony: key msgs for the relay (plaintext data keys
// allowed, a small budget), key shared for two tenants by context, and a
// MAC key. Officers alice, bob and carol, 2 of 3.
func (v *redVault) redCeremony(msgsVolume int) string {
	var b strings.Builder
	b.WriteString("threshold: 2\nofficers:\n")
	for _, n := range officerNames {
		fmt.Fprintf(&b, "  - {name: %s, public_key: officers/%s.pub, share_public_key: officers/%s.share.pub}\n", n, n, n)
	}
	relay, relayB := v.identity["relay"], v.identity["relay-b"]
	fmt.Fprintf(&b, `keys:
  - {name: msgs, purpose: encrypt}
  - {name: shared, purpose: encrypt}
grants:
  - {id: relay-msgs, identity: %[1]q, key: msgs, operations: [encrypt, decrypt, datakey, unwrap, rewrap], allow_plaintext: true}
  - {id: tenant-a, identity: %[1]q, key: shared, operations: [encrypt, decrypt, datakey, unwrap], context_match: {tenant: a}, allow_plaintext: true}
  - {id: tenant-b, identity: %[2]q, key: shared, operations: [encrypt, decrypt, datakey, unwrap], context_match: {tenant: b}, allow_plaintext: true}
budgets:
  - {identity: %[1]q, key: msgs, rate: 1000, burst: %[3]d, volume: %[3]d, window: 24h}
  - {identity: %[1]q, key: shared, rate: 1000, burst: 1000, volume: 100000, window: 24h}
  - {identity: %[2]q, key: shared, rate: 1000, burst: 1000, volume: 100000, window: 24h}
`, relay, relayB, msgsVolume)
	return b.String()
}

// newRedVault makes the vault's files (PKI, officer keys, config with the
// gateway on, ceremony file) without starting it.
func newRedVault(t *testing.T, msgsVolume int) *redVault {
	t.Helper()
	bin, ctl := binaries(t)
	base := &vault{dir: t.TempDir(), bin: bin, ctl: ctl}
	v := &redVault{vault: base, identity: map[string]string{}}
	v.tok = hsmtest.New(t)
	v.data = filepath.Join(v.dir, "data")
	for _, d := range []string{v.data, filepath.Join(v.data, "audit"), filepath.Join(v.dir, "officers")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if v.pki, err = pki.GenerateDev(filepath.Join(v.dir, "pki"), redRoles); err != nil {
		t.Fatal(err)
	}
	if v.other, err = pki.GenerateDev(filepath.Join(v.dir, "other-ca"), []string{"relay", "officer"}); err != nil {
		t.Fatal(err)
	}
	for _, r := range redRoles {
		v.identity[r] = v.pki.Clients[r].Identity
	}
	for _, n := range append(officerNames, "mallory") {
		if inv := v.run(t, nil, "officer", "keygen", "--out", v.officerKey(n)); inv.code != 0 {
			t.Fatalf("keygen %s: %s", n, inv.stderr)
		}
	}
	v.gwAddr = freeLoopbackAddr(t)
	v.cfgFile = filepath.Join(v.dir, "custodyd.yaml")
	var c strings.Builder
	fmt.Fprintf(&c, `listen: 127.0.0.1:0
http_listen: 127.0.0.1:0
gateway_listen: %s
tls: {cert_file: %s, key_file: %s, client_ca_file: %s}
hsm: {uri: "%s"}
store: {path: %s}
audit: {dir: %s}
governance: {time_lock: 1h}
identities:
`, v.gwAddr, v.pki.ServerCertFile, v.pki.ServerKeyFile, v.pki.CAFile, v.tok.URI, filepath.Join(v.data, "custody.db"), filepath.Join(v.data, "audit"))
	for _, id := range []struct{ name, role, client string }{
		{"relay-a", "relay", "relay"}, {"relay-b", "relay", "relay-b"}, {"operator-1", "operator", "operator"},
		{"officer-1", "officer", "officer"}, {"officer-carol", "officer", "officer-c"}, {"auditor-1", "auditor", "auditor"},
	} {
		fmt.Fprintf(&c, "  - {name: %s, role: %s, uri: %q}\n", id.name, id.role, v.identity[id.client])
	}
	if err := os.WriteFile(v.cfgFile, []byte(c.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	v.ceremonyFile = filepath.Join(v.dir, "ceremony.yaml")
	if err := os.WriteFile(v.ceremonyFile, []byte(v.redCeremony(msgsVolume)), 0o644); err != nil {
		t.Fatal(err)
	}
	v.pubFile = filepath.Join(v.dir, "audit.pub.pem")
	v.anchors = filepath.Join(v.dir, "anchors.jsonl")
	return v
}

// serve brings the vault to production service the way a site does: start
// sealed, run the ceremony, restart (sealed again), two officers unseal.
// It then takes the audit public key and a first off-box anchor.
func (v *redVault) serve(t *testing.T) {
	t.Helper()
	v.start(t)
	v.ceremony(t)
	v.stop(t, syscall.SIGTERM)
	v.start(t)
	for _, n := range []string{"alice", "bob"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			t.Fatalf("unseal %s: %+v\n%s", n, inv, v.stderr)
		}
	}
	v.waitGateway(t)
	if inv := v.ctlAs(t, "auditor", nil, "audit", "pubkey", "--out", v.pubFile); inv.code != 0 {
		t.Fatalf("audit pubkey: %+v", inv)
	}
	v.anchor(t)
}

// anchor appends a checkpoint covering the current head to the off-box
// anchor file, its signature checked.
func (v *redVault) anchor(t *testing.T) {
	t.Helper()
	if inv := v.ctlAs(t, "auditor", nil, "audit", "checkpoint", "--out", v.anchors, "--pubkey", v.pubFile); inv.code != 0 {
		t.Fatalf("audit checkpoint: %+v", inv)
	}
}

// evidence checks that the evidence survived an attack: a checkpoint is
// anchored after it, the log verifies offline against every anchor taken
// before and after, and the signed transparency report (checked with the
// audit key) is returned for the caller's counts.
func (v *redVault) evidence(t *testing.T) *audit.TransparencyReport {
	t.Helper()
	v.anchor(t)
	inv := v.run(t, nil, "audit", "verify", "--dir", filepath.Join(v.data, "audit"), "--pubkey", v.pubFile, "--anchor", v.anchors)
	if inv.code != 0 {
		t.Fatalf("audit verify with anchors before and after: %+v", inv)
	}
	repFile := filepath.Join(t.TempDir(), "report.json")
	if inv := v.ctlAs(t, "auditor", nil, "audit", "report", "--pubkey", v.pubFile, "--out", repFile); inv.code != 0 {
		t.Fatalf("audit report: %+v", inv)
	}
	if inv := v.run(t, nil, "audit", "report", "verify", "--file", repFile, "--pubkey", v.pubFile); inv.code != 0 {
		t.Fatalf("report verify: %+v", inv)
	}
	b, err := os.ReadFile(repFile)
	if err != nil {
		t.Fatal(err)
	}
	var rep audit.TransparencyReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	return &rep
}

// keyCount is the report's count for key (zero when absent).
func keyCount(rep *audit.TransparencyReport, key string) audit.UseCount {
	for _, k := range rep.Keys {
		if k.Name == key {
			return k
		}
	}
	return audit.UseCount{Name: key}
}

// idCount is the report's count for identity (zero when absent).
func idCount(rep *audit.TransparencyReport, id string) audit.UseCount {
	for _, k := range rep.Identities {
		if k.Name == id {
			return k
		}
	}
	return audit.UseCount{Name: id}
}

// metrics scrapes /metrics.
func (v *redVault) metrics(t *testing.T) string {
	t.Helper()
	code, body := v.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	return body
}

// metricValue is the value of one exact series line of a scrape (0 when
// absent).
func metricValue(body, series string) float64 {
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// restClient is an HTTPS client of the gateway with client's certificate
// from pk ("" for none).
func restClient(t *testing.T, caFile string, pk *pki.DevPKI, client string) *http.Client {
	t.Helper()
	var cfg *tls.Config
	var err error
	if client == "" {
		cfg = &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "localhost", RootCAs: caPool(t, caFile)}
	} else {
		c := pk.Clients[client]
		if cfg, err = pki.ClientTLSConfig(caFile, c.CertFile, c.KeyFile, "localhost"); err != nil {
			t.Fatal(err)
		}
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// caPool is a pool holding the CA certificate in file.
func caPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("%s holds no certificate", file)
	}
	return pool
}

// rest posts a JSON body to the gateway as client and returns the status
// and body (err for a transport failure, such as a refused handshake).
func (v *redVault) rest(t *testing.T, hc *http.Client, path string, body any) (int, []byte, error) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Post("https://"+v.gwAddr+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, nil
}

// waitGateway waits until the gateway accepts TLS connections.
func (v *redVault) waitGateway(t *testing.T) {
	t.Helper()
	waitFor(t, "gateway listening", func() (bool, string) {
		c, err := net.DialTimeout("tcp", v.gwAddr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
}

// freeLoopbackAddr finds a free loopback port for a listener custodyd does
// not print while sealed (the gateway).
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// recordsOf returns the audit records (as read from the files) whose
// method is one of methods.
func recordsOf(t *testing.T, dir string, methods ...string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, r := range auditRecords(t, dir) {
		for _, m := range methods {
			if r["method"] == m {
				out = append(out, r)
			}
		}
	}
	return out
}
