// Package etcdtest runs real etcd members for tests: a pinned etcd binary
// built from the repository's tools/etcd module (cached as bin/etcd), one or
// three members on 127.0.0.1 with TLS for clients and peers (client
// certificates required), each in its own data directory under t.TempDir(),
// stopped when the test ends.
//
// Why a built binary rather than embed.StartEtcd in the test process: the
// etcd server and its dependency graph (a second gRPC server stack, bbolt
// tuning, OpenTelemetry) stay out of the main module, so go.mod and every
// binary we ship depend only on the etcd client; and a member in its own
// process can be killed, stopped and restarted like a real one, which is
// what the failure tests need.
//
// Nothing is skipped: when the binary cannot be built the test fails with
// the command that builds it.
package etcdtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BinaryEnv overrides the etcd binary (an absolute path).
const BinaryEnv = "CUSTODY_ETCD_BIN"

// serverModule is the module whose main package is etcd.
const serverModule = "go.etcd.io/etcd/server/v3"

// Root returns the repository root: the nearest directory above the working
// directory whose go.mod is the custody module.
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/custodyhq/custody\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("etcdtest: repository root (go.mod of github.com/custodyhq/custody) not found above the working directory")
		}
		dir = parent
	}
}

// PinnedVersion returns the etcd server version tools/etcd/go.mod requires
// ("3.7.3").
func PinnedVersion(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "tools", "etcd", "go.mod"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == serverModule && strings.HasPrefix(f[1], "v") {
			return strings.TrimPrefix(f[1], "v"), nil
		}
	}
	return "", fmt.Errorf("etcdtest: tools/etcd/go.mod does not require %s", serverModule)
}

// BuildCommand is the command that builds the pinned etcd into bin/etcd.
func BuildCommand(root string) string {
	return fmt.Sprintf("cd %s/tools/etcd && go build -o ../../bin/etcd %s", root, serverModule)
}

var binOnce struct {
	sync.Mutex
	path string
}

// Binary returns the path of an etcd binary of the pinned version (see
// EnsureBinary), failing the test, with the build command, when it cannot
// be had.
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Lock()
	defer binOnce.Unlock()
	if binOnce.path != "" {
		return binOnce.path
	}
	if p := os.Getenv(BinaryEnv); p != "" {
		binOnce.path = p
		return p
	}
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	p, err := EnsureBinary(root, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	binOnce.path = p
	return p
}

// EnsureBinary returns root/bin/etcd, building it first from tools/etcd
// when it is missing or of another version than tools/etcd/go.mod pins.
// Concurrent processes (go test runs packages in parallel) take turns on a
// lock file, so the build happens once; afterwards the binary is reused.
func EnsureBinary(root string, logf func(format string, args ...any)) (string, error) {
	want, err := PinnedVersion(root)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "etcd")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(root, "bin", ".etcd.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if binaryVersion(bin) == want {
		return bin, nil
	}
	logf("building etcd %s into %s (once; cached afterwards)", want, bin)
	cmd := exec.Command("go", "build", "-o", bin, serverModule)
	cmd.Dir = filepath.Join(root, "tools", "etcd")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("etcd %s is needed and could not be built: %v\n%s\nrun: %s", want, err, out, BuildCommand(root))
	}
	if got := binaryVersion(bin); got != want {
		return "", fmt.Errorf("built %s reports version %q, want %q; run: %s", bin, got, want, BuildCommand(root))
	}
	return bin, nil
}

// binaryVersion runs bin --version and returns its version, or "".
func binaryVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "etcd Version: "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// PKI is a CA with one certificate used by every member (server and peer,
// for 127.0.0.1 and localhost) and one client certificate, as PEM files.
type PKI struct {
	CAFile, ServerCert, ServerKey, ClientCert, ClientKey string
}

// NewPKI writes a fresh CA and certificates into dir.
func NewPKI(dir string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcdtest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	p := &PKI{CAFile: filepath.Join(dir, "ca.pem")}
	if err := writePEM(p.CAFile, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	leaf := func(name string, serial int64, usages ...x509.ExtKeyUsage) (string, string, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usages,
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return "", "", err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", "", err
		}
		cf, kf := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		if err := writePEM(cf, "CERTIFICATE", der); err != nil {
			return "", "", err
		}
		return cf, kf, writePEM(kf, "PRIVATE KEY", kder)
	}
	if p.ServerCert, p.ServerKey, err = leaf("member", 2, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, err
	}
	if p.ClientCert, p.ClientKey, err = leaf("client", 3, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, err
	}
	return p, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// ClientTLS is the client side TLS configuration for the members.
func (p *PKI) ClientTLS() (*tls.Config, error) {
	caPEM, err := os.ReadFile(p.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	pair, err := tls.LoadX509KeyPair(p.ClientCert, p.ClientKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{pair}}, nil
}

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	DataDir   string
	LogFile   string
	args      []string
	bin       string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Cluster is a running set of members.
type Cluster struct {
	PKI     *PKI
	Members []*Member
	tls     *tls.Config
	t       testing.TB
}

// Start runs an n-member cluster (n is 1 or 3) and stops it when the test
// ends. It returns once every member reports healthy.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	c, err := Launch(bin, dir, n, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	c.t = t
	t.Cleanup(func() {
		if t.Failed() {
			for _, m := range c.Members {
				t.Logf("etcd member %s log tail:\n%s", m.Name, tail(m.LogFile, 20))
			}
		}
		c.Stop()
	})
	return c
}

// Launch starts an n-member cluster with data under dir, members listening
// on host (loopback) with ports chosen by the kernel. Stop it with Stop.
func Launch(bin, dir string, n int, host string) (*Cluster, error) {
	p, err := NewPKI(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(host, 2*n)
	if err != nil {
		return nil, err
	}
	c := &Cluster{PKI: p}
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("https://%s:%d", host, ports[2*i]),
			PeerURL:   fmt.Sprintf("https://%s:%d", host, ports[2*i+1]),
			DataDir:   filepath.Join(dir, fmt.Sprintf("m%d", i)),
			bin:       bin,
		}
		m.LogFile = m.DataDir + ".log"
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	token := fmt.Sprintf("custody-test-%d", time.Now().UnixNano())
	for _, m := range c.Members {
		m.args = []string{
			"--name", m.Name, "--data-dir", m.DataDir,
			"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			"--cert-file", p.ServerCert, "--key-file", p.ServerKey, "--trusted-ca-file", p.CAFile, "--client-cert-auth",
			"--peer-cert-file", p.ServerCert, "--peer-key-file", p.ServerKey, "--peer-trusted-ca-file", p.CAFile, "--peer-client-cert-auth",
			"--log-level", "warn",
			// Tests share two cores with everything else: longer raft
			// timings than the defaults (100ms/1s) keep a busy machine from
			// causing leader elections the tests did not ask for.
			"--heartbeat-interval", "250", "--election-timeout", "2500",
		}
		if err := m.start(); err != nil {
			c.Stop()
			return nil, err
		}
	}
	if c.tls, err = p.ClientTLS(); err != nil {
		c.Stop()
		return nil, err
	}
	for _, m := range c.Members {
		if err := c.WaitHealthy(m, time.Minute); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// freePorts reserves n distinct ports by listening, then releases them.
func freePorts(host string, n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (m *Member) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(m.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(m.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start etcd %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	m.cmd, m.done = cmd, done
	return nil
}

// Stop stops the member gracefully (SIGTERM, then SIGKILL after 10s).
func (m *Member) Stop() { m.signal(syscall.SIGTERM, 10*time.Second) }

// Kill stops the member with SIGKILL.
func (m *Member) Kill() { m.signal(syscall.SIGKILL, 10*time.Second) }

func (m *Member) signal(sig syscall.Signal, grace time.Duration) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart starts a stopped member again on its data directory.
func (m *Member) Restart() error { return m.start() }

// Running reports whether the member's process is up.
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.Members))
	for i, m := range c.Members {
		out[i] = m.ClientURL
	}
	return out
}

// ClientTLS returns a fresh client TLS configuration for the cluster.
func (c *Cluster) ClientTLS() *tls.Config { return c.tls.Clone() }

// WaitHealthy polls the member's /health endpoint until it reports healthy
// (which needs a quorum) or timeout passes.
func (c *Cluster) WaitHealthy(m *Member, timeout time.Duration) error {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: c.tls.Clone()}, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		resp, err := hc.Get(m.ClientURL + "/health")
		if err == nil {
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(b.String(), `"health":"true"`) {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(b.String()))
		} else {
			last = err.Error()
		}
		if !m.Running() {
			return fmt.Errorf("etcd member %s exited; log:\n%s", m.Name, tail(m.LogFile, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("etcd member %s not healthy after %v (last: %s); log:\n%s", m.Name, timeout, last, tail(m.LogFile, 20))
}

// Stop stops every member.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Go(m.Stop)
	}
	wg.Wait()
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// Context returns a context for setup calls bounded to a minute.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}
