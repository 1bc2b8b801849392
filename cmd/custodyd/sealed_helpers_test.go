package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/seal"
	"github.com/custodyhq/custody/internal/store"
)

var (
	binOnce          sync.Once
	binDir, binErrS  string
	custodydBin, ctl string
)

// binaries builds custodyd and custodyctl once per test binary.
func binaries(t *testing.T) (string, string) {
	t.Helper()
	binOnce.Do(func() {
		d, err := os.MkdirTemp("", "custody-sealed-bin-")
		if err != nil {
			binErrS = err.Error()
			return
		}
		binDir = d
		for _, b := range []struct{ out, pkg string }{{"custodyd", "."}, {"custodyctl", "../custodyctl"}} {
			if out, err := exec.Command("go", "build", "-o", filepath.Join(d, b.out), b.pkg).CombinedOutput(); err != nil {
				binErrS = fmt.Sprintf("build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
		custodydBin, ctl = filepath.Join(d, "custodyd"), filepath.Join(d, "custodyctl")
	})
	if binErrS != "" {
		t.Fatal(binErrS)
	}
	return custodydBin, ctl
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// lockedBuffer collects a child's output while tests read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// vault is a production custodyd (no pin_file, no pin_env) on its own
// SoftHSM token, with officers alice, bob and carol (and mallory, who is
// not one) whose keys custodyctl made.
type vault struct {
	dir, data, cfgFile, ceremonyFile string
	tok                              *hsmtest.Token
	pki                              *pki.DevPKI
	bin, ctl                         string

	procEnv  []string // extra environment for custodyd
	proc     *exec.Cmd
	pid      int
	stdout   *lockedBuffer
	stderr   *lockedBuffer
	logs     []*lockedBuffer // stderr of every run, for the leak scan
	addr     string
	httpAddr string
}

var officerNames = []string{"alice", "bob", "carol"}

func newVault(t *testing.T) *vault {
	t.Helper()
	bin, ctl := binaries(t)
	v := &vault{dir: t.TempDir(), bin: bin, ctl: ctl}
	v.tok = hsmtest.New(t)
	v.data = filepath.Join(v.dir, "data")
	for _, d := range []string{v.data, filepath.Join(v.data, "audit"), filepath.Join(v.dir, "officers")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if v.pki, err = pki.GenerateDev(filepath.Join(v.dir, "pki"), []string{"relay", "operator", "officer", "auditor"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range append(officerNames, "mallory") {
		if inv := v.run(t, nil, "officer", "keygen", "--out", v.officerKey(n)); inv.code != 0 {
			t.Fatalf("keygen %s: %s", n, inv.stderr)
		}
	}
	v.cfgFile = filepath.Join(v.dir, "custodyd.yaml")
	v.writeConfig(t, v.cfgFile, v.data)
	v.ceremonyFile = filepath.Join(v.dir, "ceremony.yaml")
	var cer strings.Builder
	cer.WriteString("threshold: 2\nofficers:\n")
	for _, n := range officerNames {
		fmt.Fprintf(&cer, "  - {name: %s, public_key: officers/%s.pub, share_public_key: officers/%s.share.pub}\n", n, n, n)
	}
	relay := v.pki.Clients["relay"].Identity
	fmt.Fprintf(&cer, `keys:
  - {name: msgs, purpose: encrypt}
grants:
  - {id: relay-msgs, identity: %q, key: msgs, operations: [encrypt, decrypt]}
budgets:
  - {identity: %q, key: msgs, rate: 1000, burst: 100, volume: 100000, window: 24h}
`, relay, relay)
	if err := os.WriteFile(v.ceremonyFile, []byte(cer.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v *vault) officerKey(name string) string { return filepath.Join(v.dir, "officers", name) }

// writeConfig writes a production config using data for store and audit.
func (v *vault) writeConfig(t *testing.T, path, data string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `listen: 127.0.0.1:0
http_listen: 127.0.0.1:0
tls: {cert_file: %s, key_file: %s, client_ca_file: %s}
hsm: {uri: "%s"}
store: {path: %s}
audit: {dir: %s}
governance: {time_lock: 1h}
identities:
`, v.pki.ServerCertFile, v.pki.ServerKeyFile, v.pki.CAFile, v.tok.URI, filepath.Join(data, "custody.db"), filepath.Join(data, "audit"))
	for _, role := range []string{"relay", "operator", "officer", "auditor"} {
		fmt.Fprintf(&b, "  - {name: %s-1, role: %s, uri: %q}\n", role, role, v.pki.Clients[role].Identity)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

var (
	addrRE = regexp.MustCompile(`gRPC \(mTLS\): (\S+)\s+metrics/health: (\S+)`)
	fpRE   = regexp.MustCompile(`(?m)^  ([0-9a-f]{4}( [0-9a-f]{4}){15})$`)
)

// start runs custodyd on cfgFile and waits until it says it is sealed.
func (v *vault) start(t *testing.T) { v.startWith(t, v.cfgFile) }

func (v *vault) startWith(t *testing.T, cfgFile string) {
	t.Helper()
	cmd := exec.Command(v.bin, "--config", cfgFile)
	cmd.Env = append(append(os.Environ(), "SOFTHSM2_CONF="+v.tok.Conf), v.procEnv...)
	v.stdout, v.stderr = &lockedBuffer{}, &lockedBuffer{}
	v.logs = append(v.logs, v.stderr)
	cmd.Stdout, cmd.Stderr = v.stdout, v.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v.proc, v.pid = cmd, cmd.Process.Pid
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if m := addrRE.FindStringSubmatch(v.stdout.String()); m != nil && fpRE.MatchString(v.stdout.String()) {
			v.addr, v.httpAddr = m[1], m[2]
			return
		}
		if cmd.ProcessState != nil || time.Now().After(deadline) {
			t.Fatalf("custodyd did not start sealed:\nstdout %s\nstderr %s", v.stdout, v.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fingerprint is the unseal key fingerprint custodyd printed.
func (v *vault) fingerprint(t *testing.T) string {
	m := fpRE.FindStringSubmatch(v.stdout.String())
	if m == nil {
		t.Fatal("no fingerprint printed")
	}
	return strings.ReplaceAll(m[1], " ", "")
}

func (v *vault) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := v.proc.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	err := v.proc.Wait()
	if sig == syscall.SIGTERM && err != nil {
		t.Fatalf("custodyd exit after SIGTERM: %v\n%s", err, v.stderr)
	}
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs custodyctl (no connection flags) with stdin.
func (v *vault) run(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	return v.runEnv(t, stdin, nil, args...)
}

func (v *vault) runEnv(t *testing.T, stdin []byte, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(v.ctl, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, out.String(), errb.String()}
}

// as returns custodyctl's connection flags for a role.
func (v *vault) as(role string) []string {
	c := v.pki.Clients[role]
	return []string{"--addr", v.addr, "--ca", v.pki.CAFile, "--cert", c.CertFile, "--tls-key", c.KeyFile, "--timeout", "60s"}
}

// ctlAs runs custodyctl as role.
func (v *vault) ctlAs(t *testing.T, role string, stdin []byte, args ...string) result {
	t.Helper()
	return v.run(t, stdin, append(v.as(role), args...)...)
}

// unseal runs `custodyctl unseal` as officer name.
func (v *vault) unseal(t *testing.T, name string) result {
	t.Helper()
	return v.ctlAs(t, "officer", nil, "unseal", "--officer-key", v.officerKey(name), "--expect-unseal-key", v.fingerprint(t))
}

func (v *vault) conn(t *testing.T, role string) *grpc.ClientConn {
	t.Helper()
	c := v.pki.Clients[role]
	cfg, err := pki.ClientTLSConfig(v.pki.CAFile, c.CertFile, c.KeyFile, "localhost")
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

func (v *vault) sealStatus(t *testing.T) *custodyv1.SealStatus {
	t.Helper()
	st, err := custodyv1.NewSealServiceClient(v.conn(t, "auditor")).GetSealStatus(tctx(t), &custodyv1.GetSealStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (v *vault) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + v.httpAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// ceremony runs `custodyctl ceremony init` with the installer's PIN on
// stdin and returns the transcript directory.
func (v *vault) ceremony(t *testing.T) string {
	t.Helper()
	out := filepath.Join(v.dir, "transcript")
	inv := v.ctlAs(t, "operator", []byte(v.tok.PIN+"\n"), "ceremony", "init", "--config", v.ceremonyFile,
		"--transcript-out", out, "--pin-stdin", "--expect-unseal-key", v.fingerprint(t))
	if inv.code != 0 {
		t.Fatalf("ceremony: %s\n%s\ncustodyd: %s", inv.stderr, inv.stdout, v.stderr)
	}
	return out
}

// officer is an officer's keys, loaded by the test (acting as the officer
// in-process where a submission must be tampered with).
type officer struct {
	name   string
	signer crypto.Signer
	share  *ecdh.PrivateKey
	fp     string
}

func (v *vault) loadOfficer(t *testing.T, name string) officer {
	t.Helper()
	read := func(path string) any {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	o := officer{name: name, signer: read(v.officerKey(name)).(crypto.Signer)}
	ec := read(v.officerKey(name) + ".share").(*ecdsa.PrivateKey)
	if ec.Curve != elliptic.P256() {
		t.Fatal("share key is not P-256")
	}
	o.share, _ = ec.ECDH()
	der, _ := x509.MarshalPKIXPublicKey(o.signer.Public())
	o.fp = seal.Fingerprint(der)
	return o
}

// readRecord reads the seal record from a stopped custodyd's store.
func readRecord(t *testing.T, dbPath string) *seal.Record {
	t.Helper()
	raw, err := store.OpenBolt(dbPath, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	kv, err := raw.Get(tctx(t), "seal/record")
	if err != nil {
		t.Fatal(err)
	}
	rec, err := seal.ParseRecord(store.UnverifiedPayload(kv.Value[:len(kv.Value)-32])) // the store's HSM MAC follows the value
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// snapshotStore copies the store of a running custodyd (its file lock
// keeps readRecord off the file itself) and returns the copy's path.
func (v *vault) snapshotStore(t *testing.T) string {
	t.Helper()
	snap := filepath.Join(t.TempDir(), "custody.db")
	db, err := os.ReadFile(filepath.Join(v.data, "custody.db"))
	if err == nil {
		err = os.WriteFile(snap, db, 0o600)
	}
	if err != nil {
		t.Fatalf("copy the store: %v", err)
	}
	return snap
}

// sealSecrets names the PIN of rec and every officer's share of it, for a
// memory scan.
func sealSecrets(t *testing.T, label string, rec *seal.Record, pin []byte, offs ...officer) map[string][]byte {
	t.Helper()
	secrets := map[string][]byte{"the " + label + " PIN": pin}
	for _, o := range offs {
		env, ok := rec.Holder(o.fp)
		if !ok {
			t.Fatalf("no share for %s", o.name)
		}
		sh, err := seal.OpenShare(o.share, rec.Ref(), env)
		if err != nil {
			t.Fatal(err)
		}
		secrets[fmt.Sprintf("%s's %s share", o.name, label)] = bytes.Clone(sh.Bytes())
		sh.Destroy()
	}
	return secrets
}

// pinFromShares decrypts the shares of the named officers (with their
// share keys) and recombines the PIN.
func pinFromShares(t *testing.T, rec *seal.Record, offs ...officer) []byte {
	t.Helper()
	var shares [][]byte
	for _, o := range offs {
		env, ok := rec.Holder(o.fp)
		if !ok {
			t.Fatalf("no share for %s", o.name)
		}
		sh, err := seal.OpenShare(o.share, rec.Ref(), env)
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, bytes.Clone(sh.Bytes()))
		sh.Destroy()
	}
	return combine(t, shares)
}

// pkcs11Login tries a PIN on the vault's token from another process and
// reports whether the token accepted it.
func (v *vault) pkcs11Login(t *testing.T, pin []byte) bool {
	t.Helper()
	tool, err := exec.LookPath("pkcs11-tool")
	if err != nil {
		t.Fatal("pkcs11-tool is not installed: run `make deps` (or `apt-get install -y opensc`)")
	}
	cmd := exec.Command(tool, "--module", v.tok.Library, "--token-label", v.tok.Label, "--login", "--pin", string(pin), "--list-objects")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+v.tok.Conf)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return true
	}
	if !strings.Contains(string(out), "CKR_PIN_INCORRECT") {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	return false
}

// auditRecords reads every record of an audit directory.
func auditRecords(t *testing.T, dir string) []map[string]any {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "audit-*.log"))
	var out []map[string]any
	for _, s := range segs {
		f, err := os.Open(s)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r map[string]any
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				out = append(out, r)
			}
		}
		f.Close()
	}
	return out
}

// waitFor polls cond (bounded) and fails with what it last saw.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func combine(t *testing.T, shares [][]byte) []byte {
	t.Helper()
	qs := make([]quorum.Share, len(shares))
	for i, s := range shares {
		qs[i] = s
	}
	pin, err := quorum.Combine(qs)
	if err != nil {
		t.Fatal(err)
	}
	return pin
}
