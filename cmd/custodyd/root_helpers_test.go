package main

// Helpers for the root-on-the-host drills (root_drill_test.go): one
// production vault after a real 2-of-3 ceremony, cloned (its directories
// and its SoftHSM token) for each drill, certificates minted the way root
// would, and custodyctl driven as operator, officers and auditor.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/pki"
)

// mintedCA is a certificate authority made in the test: the CA a site
// trusts besides its own, or the one root makes for itself.
type mintedCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func mintCA(t *testing.T, name string) mintedCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return mintedCA{cert: c, key: k, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// loadCA loads the dev CA (certificate and key) as root on the host can.
func loadCA(t *testing.T, certFile, keyFile string) mintedCA {
	t.Helper()
	cb, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	c, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return mintedCA{cert: c, key: k.(*ecdsa.PrivateKey), pem: cb}
}

func (ca mintedCA) fingerprint() string { return pki.CertFingerprint(ca.cert) }

// issue makes a client certificate with the URI SAN uri and a new key.
func (ca mintedCA) issue(t *testing.T, dir, name, uri string) (certFile, keyFile string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), URIs: []*url.URL{u},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &k.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// spkiOf is the hex SHA-256 of a certificate file's SubjectPublicKeyInfo.
func spkiOf(t *testing.T, certFile string) string {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// trustOpts are the parts of custodyd's configuration the ceremony fixes,
// and a few a drill changes.
type trustOpts struct {
	caFile         string
	timeLock       string
	freezeRefusals int
	freezeWithin   string
	extra          []string // extra identity lines
	dev            bool
	pinFile        string
}

// rootVault is a production vault for the drills: vault (sealed_helpers)
// plus the configuration the ceremony fixed.
type rootVault struct {
	*vault
	opts     trustOpts
	caBundle string // tls.client_ca_file: the dev CA and ca2
	anchorFn string // audit.anchor_file: checkpoints kept "off the box"
}

// writeTrustConfig writes custodyd's configuration with o.
func (v *rootVault) writeTrustConfig(t *testing.T, path string, o trustOpts) {
	t.Helper()
	var b strings.Builder
	if o.dev {
		b.WriteString("dev: true\n")
	}
	fmt.Fprintf(&b, "listen: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\n")
	fmt.Fprintf(&b, "tls: {cert_file: %s, key_file: %s, client_ca_file: %s}\n", v.pki.ServerCertFile, v.pki.ServerKeyFile, o.caFile)
	if o.pinFile != "" {
		fmt.Fprintf(&b, "hsm: {uri: %q, pin_file: %s}\n", v.tok.URI, o.pinFile)
	} else {
		fmt.Fprintf(&b, "hsm: {uri: %q}\n", v.tok.URI)
	}
	fmt.Fprintf(&b, "store: {path: %s}\naudit: {dir: %s, anchor_file: %s}\n", filepath.Join(v.data, "custody.db"), filepath.Join(v.data, "audit"), v.anchorFn)
	fmt.Fprintf(&b, "governance: {time_lock: %s, freeze: {refusals: %d, within: %s}}\n", o.timeLock, o.freezeRefusals, o.freezeWithin)
	b.WriteString("identities:\n")
	for _, role := range []string{"relay", "operator", "officer", "auditor"} {
		fmt.Fprintf(&b, "  - {name: %s-1, role: %s, uri: %q}\n", role, role, v.pki.Clients[role].Identity)
	}
	for _, l := range o.extra {
		b.WriteString("  - " + l + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// rootFixture is the production vault every drill clones: stopped after a
// 2-of-3 ceremony that fixed the dev CA and ca2, a 24h time-lock, a freeze
// after 5 refusals in 10 minutes, and the relay's grant on msgs pinned to
// its key with a budget of burst 10 and volume 20 a day.
type rootFixture struct {
	base      *rootVault
	ca2       mintedCA
	devCA     mintedCA
	relaySPKI string
}

func newRootFixture(t *testing.T) *rootFixture {
	t.Helper()
	v := &rootVault{vault: newVault(t)}
	f := &rootFixture{base: v, ca2: mintCA(t, "ca2"), devCA: loadCA(t, v.pki.CAFile, v.pki.CAKeyFile)}
	v.caBundle = filepath.Join(v.dir, "pki", "client-cas.pem")
	if err := os.WriteFile(v.caBundle, append(append([]byte{}, f.devCA.pem...), f.ca2.pem...), 0o644); err != nil {
		t.Fatal(err)
	}
	v.anchorFn = filepath.Join(v.dir, "offbox", "anchors.jsonl")
	os.MkdirAll(filepath.Dir(v.anchorFn), 0o700)
	v.opts = trustOpts{caFile: v.caBundle, timeLock: "24h", freezeRefusals: 5, freezeWithin: "10m"}
	v.writeTrustConfig(t, v.cfgFile, v.opts)
	f.relaySPKI = spkiOf(t, v.pki.Clients["relay"].CertFile)
	relay := v.pki.Clients["relay"].Identity
	var cer strings.Builder
	cer.WriteString("threshold: 2\nofficers:\n")
	for _, n := range officerNames {
		fmt.Fprintf(&cer, "  - {name: %s, public_key: officers/%s.pub, share_public_key: officers/%s.share.pub}\n", n, n, n)
	}
	fmt.Fprintf(&cer, `keys:
  - {name: msgs, purpose: encrypt}
grants:
  - {id: relay-msgs, identity: %q, key: msgs, operations: [encrypt, decrypt], spki: %s}
budgets:
  - {identity: %q, key: msgs, rate: 1000, burst: 10, volume: 20, window: 24h}
`, relay, f.relaySPKI, relay)
	if err := os.WriteFile(v.ceremonyFile, []byte(cer.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	v.start(t)
	v.ceremony(t)
	v.stop(t, syscall.SIGTERM)
	return f
}

// clone copies the fixture's directories and token to new ones, so a drill
// can do what it likes to them.
func (f *rootFixture) clone(t *testing.T) *rootVault {
	t.Helper()
	b := f.base
	dir := t.TempDir()
	copyTree(t, b.dir, dir)
	tokDir := t.TempDir()
	tok := *b.tok
	tok.Dir, tok.TokenDir, tok.Conf = tokDir, filepath.Join(tokDir, "tokens"), filepath.Join(tokDir, "softhsm2.conf")
	copyTree(t, b.tok.TokenDir, tok.TokenDir)
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\nslots.mechanisms = ALL\nlibrary.reset_on_fork = false\n", tok.TokenDir)
	if err := os.WriteFile(tok.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	re := func(p string) string { return strings.Replace(p, b.dir, dir, 1) }
	p := *b.pki
	p.Dir, p.CAFile, p.CAKeyFile, p.ServerCertFile, p.ServerKeyFile = re(p.Dir), re(p.CAFile), re(p.CAKeyFile), re(p.ServerCertFile), re(p.ServerKeyFile)
	p.Clients = map[string]pki.DevClient{}
	for r, c := range b.pki.Clients {
		p.Clients[r] = pki.DevClient{CertFile: re(c.CertFile), KeyFile: re(c.KeyFile), Identity: c.Identity}
	}
	v := *b.vault
	v.dir, v.data, v.cfgFile, v.ceremonyFile, v.tok, v.pki = dir, re(b.data), re(b.cfgFile), re(b.ceremonyFile), &tok, &p
	v.proc, v.logs = nil, nil
	rv := &rootVault{vault: &v, opts: b.opts, caBundle: re(b.caBundle), anchorFn: re(b.anchorFn)}
	rv.opts.caFile = rv.caBundle
	rv.writeTrustConfig(t, v.cfgFile, rv.opts)
	return rv
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		info, _ := d.Info()
		return os.WriteFile(dst, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// startRefused runs custodyd on cfgFile and expects it to exit at start;
// it returns what it wrote to stderr.
func (v *rootVault) startRefused(t *testing.T, cfgFile string) string {
	t.Helper()
	cmd := exec.Command(v.bin, "--config", cfgFile)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+v.tok.Conf)
	var out, errb lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("custodyd exited 0 on a config it should refuse:\n%s", errb.String())
		}
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("custodyd did not refuse to start:\nstdout %s\nstderr %s", out.String(), errb.String())
	}
	return errb.String()
}

// startUnsealed runs a custodyd that reads its PIN from a file and waits
// until it serves.
func (v *rootVault) startUnsealed(t *testing.T, cfgFile string) {
	t.Helper()
	cmd := exec.Command(v.bin, "--config", cfgFile)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+v.tok.Conf)
	v.stdout, v.stderr = &lockedBuffer{}, &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = v.stdout, v.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v.proc, v.pid = cmd, cmd.Process.Pid
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(90 * time.Second)
	for {
		if m := servingRE.FindStringSubmatch(v.stderr.String()); m != nil {
			v.addr, v.httpAddr = m[1], m[2]
			return
		}
		if cmd.ProcessState != nil || time.Now().After(deadline) {
			t.Fatalf("custodyd did not start:\n%s", v.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unsealBoth unseals with alice's and bob's shares and checks it serves.
func (v *rootVault) unsealBoth(t *testing.T) {
	t.Helper()
	for _, n := range []string{"alice", "bob"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			t.Fatalf("unseal by %s: %+v\ncustodyd: %s", n, inv, v.stderr)
		}
	}
}

// unsealRefused gives alice's share, then bob's, and returns why the start
// that the second one completes was refused.
func (v *rootVault) unsealRefused(t *testing.T) string {
	t.Helper()
	if inv := v.unseal(t, "alice"); inv.code != 0 {
		t.Fatalf("unseal by alice: %+v", inv)
	}
	inv := v.unseal(t, "bob")
	if inv.code == 0 {
		t.Fatalf("the vault unsealed and serves: %+v", inv)
	}
	return inv.stderr
}

// connAs dials custodyd with a certificate of the test's making.
func (v *rootVault) connAs(t *testing.T, certFile, keyFile string) *grpc.ClientConn {
	t.Helper()
	cfg, err := pki.ClientTLSConfig(v.pki.CAFile, certFile, keyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(v.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func encryptOn(t *testing.T, conn *grpc.ClientConn) error {
	t.Helper()
	_, err := custodyv1.NewCryptoServiceClient(conn).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
	return err
}

// anchor appends the vault's latest checkpoint to file (an auditor keeping
// anchors off the box).
func (v *rootVault) anchor(t *testing.T, file string) {
	t.Helper()
	if inv := v.ctlAs(t, "auditor", nil, "audit", "checkpoint", "--out", file); inv.code != 0 {
		t.Fatalf("audit checkpoint: %+v", inv)
	}
}

// pubkey fetches the audit public key.
func (v *rootVault) pubkey(t *testing.T) string {
	t.Helper()
	out := filepath.Join(v.dir, "audit.pub")
	if inv := v.ctlAs(t, "auditor", nil, "audit", "pubkey", "--out", out); inv.code != 0 {
		t.Fatalf("audit pubkey: %+v", inv)
	}
	return out
}

// verifyAudit runs `custodyctl audit verify` on dir with the anchors in
// files (concatenated) and returns its result.
func (v *rootVault) verifyAudit(t *testing.T, dir, pub string, anchorFiles ...string) result {
	t.Helper()
	all := filepath.Join(t.TempDir(), "anchors.jsonl")
	var b []byte
	for _, f := range anchorFiles {
		x, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, x...)
	}
	if err := os.WriteFile(all, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return v.run(t, nil, "audit", "verify", "--dir", dir, "--pubkey", pub, "--anchor", all)
}

// evidenceSurvives checks the audit log verifies with the anchors taken
// before the attack and one taken now.
func (v *rootVault) evidenceSurvives(t *testing.T, pub, before string) {
	t.Helper()
	after := filepath.Join(t.TempDir(), "after.jsonl")
	v.anchor(t, after)
	if inv := v.verifyAudit(t, filepath.Join(v.data, "audit"), pub, before, after); inv.code != 0 {
		t.Fatalf("the audit log does not verify with the anchors taken before and after: %+v", inv)
	}
}

// propose files a proposal as the operator and returns its id.
func (v *rootVault) propose(t *testing.T, args ...string) string {
	t.Helper()
	inv := v.ctlAs(t, "operator", nil, append([]string{"-o", "json", "proposal", "create"}, args...)...)
	if inv.code != 0 {
		t.Fatalf("proposal create %v: %+v", args, inv)
	}
	var info struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(inv.stdout), &info); err != nil || info.ID == "" {
		t.Fatalf("proposal create output: %v\n%s", err, inv.stdout)
	}
	return info.ID
}

func (v *rootVault) approve(t *testing.T, id, officer string) string {
	t.Helper()
	inv := v.ctlAs(t, "officer", nil, "proposal", "approve", id, "--officer-key", v.officerKey(officer), "--yes")
	if inv.code != 0 {
		t.Fatalf("approve %s by %s: %+v", id, officer, inv)
	}
	return inv.stdout
}

// auditRecordsWhere returns records of dir for which match holds.
func auditRecordsWhere(t *testing.T, dir string, match func(map[string]any) bool) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, r := range auditRecords(t, dir) {
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

// wantAll fails unless s contains every one of wants.
func wantAll(t *testing.T, what, s string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(s, w) {
			t.Errorf("%s does not say %q:\n%s", what, w, s)
		}
	}
}

var refusalLine = regexp.MustCompile(`(?m)^custodyd: .*$`)

// refusal is custodyd's one-line reason for exiting at start.
func refusal(t *testing.T, stderr string) string {
	t.Helper()
	m := refusalLine.FindString(stderr)
	if m == "" {
		t.Fatalf("no refusal line in:\n%s", stderr)
	}
	return m
}

// newRootSigner is a key of root's own making (not the HSM's audit key).
func newRootSigner(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
