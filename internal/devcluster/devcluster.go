// Package devcluster runs a development Custody cluster on loopback: three
// etcd members (TLS, client certificates) and N custodyd processes sharing
// one SoftHSM token and one etcd prefix, each with its own audit chain. It
// backs `make cluster` and the tests that SIGKILL replicas under load.
//
// Everything lives in one directory that is wiped at start: the cluster is
// new every time. Processes are children of the caller (killed if it dies)
// and Stop ends them in order: custodyd first, then etcd.
package devcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/store/etcdtest"
)

// Options configure Start.
type Options struct {
	// Dir holds everything (wiped first).
	Dir string
	// Custodyd and Etcd are the binaries.
	Custodyd, Etcd string
	// Replicas is the number of custodyd processes (default 3).
	Replicas int
	// EtcdMembers is 1 or 3 (default 3).
	EtcdMembers int
	// BasePort is replica 0's gRPC port; replica i listens on BasePort+i
	// (gRPC) and BasePort+100+i (metrics/health). 0 picks free ports.
	BasePort int
	// Log receives progress lines (nil: discarded).
	Log io.Writer
	// Extra is YAML appended to every replica's configuration (for
	// example a governance section with a short time-lock).
	Extra string
}

// Replica is one custodyd process.
type Replica struct {
	Index      int
	Dir        string
	ConfigFile string
	LogFile    string
	GRPCAddr   string
	HTTPAddr   string

	bin  string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Cluster is a running development cluster.
type Cluster struct {
	Dir      string
	Setup    *daemon.DevSetup
	Etcd     *etcdtest.Cluster
	Replicas []*Replica
	Prefix   string
	log      io.Writer
	extra    string
}

// Prefix is the vault's etcd prefix.
const Prefix = "/custody/dev/"

// Start builds the cluster and returns once every replica is ready.
func Start(ctx context.Context, o Options) (_ *Cluster, err error) {
	if o.Replicas <= 0 {
		o.Replicas = 3
	}
	if o.EtcdMembers <= 0 {
		o.EtcdMembers = 3
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, Prefix: Prefix, log: o.Log, extra: o.Extra}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()

	fmt.Fprintf(o.Log, "starting %d etcd members (TLS) ...\n", o.EtcdMembers)
	if c.Etcd, err = etcdtest.Launch(o.Etcd, filepath.Join(dir, "etcd"), o.EtcdMembers, "127.0.0.1"); err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	// One SoftHSM token and one dev PKI shared by every replica; PrepareDev
	// sets SOFTHSM2_CONF, which the replicas inherit.
	setup, base, err := daemon.PrepareDev(filepath.Join(dir, "vault"), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c.Setup = setup
	ports, err := c.ports(o)
	if err != nil {
		return nil, err
	}
	for i := range o.Replicas {
		r := &Replica{
			Index: i, Dir: filepath.Join(dir, "replica-"+strconv.Itoa(i)), bin: o.Custodyd,
			GRPCAddr: "127.0.0.1:" + strconv.Itoa(ports[2*i]), HTTPAddr: "127.0.0.1:" + strconv.Itoa(ports[2*i+1]),
		}
		r.ConfigFile, r.LogFile = filepath.Join(r.Dir, "custodyd.yaml"), filepath.Join(r.Dir, "custodyd.log")
		if err := os.MkdirAll(filepath.Join(r.Dir, "audit"), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(r.ConfigFile, []byte(c.config(r, base.HSM.URI, base.HSM.PINFile)), 0o600); err != nil {
			return nil, err
		}
		c.Replicas = append(c.Replicas, r)
	}
	// The first replica creates custodyd's own keys on the token and the
	// demo key; the others start once it is ready and find them.
	for _, r := range c.Replicas {
		fmt.Fprintf(o.Log, "starting custodyd replica %d on %s ...\n", r.Index, r.GRPCAddr)
		if err := r.Start(); err != nil {
			return nil, err
		}
		if err := r.WaitReady(ctx, time.Minute); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) ports(o Options) ([]int, error) {
	n := 2 * o.Replicas
	if o.BasePort > 0 {
		out := make([]int, 0, n)
		for i := range o.Replicas {
			out = append(out, o.BasePort+i, o.BasePort+100+i)
		}
		return out, nil
	}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// config renders replica r's configuration file: a dev vault (config grants
// apply) on the shared token and etcd prefix, with its own audit directory.
func (c *Cluster) config(r *Replica, hsmURI, pinFile string) string {
	p, e := c.Setup.PKI, c.Etcd.PKI
	q := strconv.Quote
	var b strings.Builder
	fmt.Fprintf(&b, "# custodyd replica %d of a development cluster (make cluster)\n", r.Index)
	fmt.Fprintf(&b, "dev: true\nreplica_id: %s\nlisten: %s\nhttp_listen: %s\n", r.ID(), r.GRPCAddr, r.HTTPAddr)
	fmt.Fprintf(&b, "tls:\n  cert_file: %s\n  key_file: %s\n  client_ca_file: %s\n", q(p.ServerCertFile), q(p.ServerKeyFile), q(p.CAFile))
	fmt.Fprintf(&b, "hsm:\n  uri: %s\n  pin_file: %s\n", q(hsmURI), q(pinFile))
	fmt.Fprintf(&b, "store:\n  backend: etcd\n  etcd:\n    endpoints: [%s]\n", strings.Join(c.Etcd.Endpoints(), ", "))
	fmt.Fprintf(&b, "    ca_file: %s\n    cert_file: %s\n    key_file: %s\n    prefix: %s\n", q(e.CAFile), q(e.ClientCert), q(e.ClientKey), c.Prefix)
	fmt.Fprintf(&b, "audit:\n  dir: %s\n", q(filepath.Join(r.Dir, "audit")))
	fmt.Fprintf(&b, "keys:\n  destroy_wait_min: 1s\n")
	b.WriteString("identities:\n")
	for _, role := range daemon.DevRoles {
		fmt.Fprintf(&b, "  - {name: dev-%s, role: %s, uri: %s}\n", role, role, q(p.Clients[role].Identity))
	}
	fmt.Fprintf(&b, "grants:\n  - identity: dev-relay\n    keys: [%s]\n    operations: [encrypt, decrypt, datakey, unwrap, rewrap]\n    allow_plaintext: true\n", daemon.DevKey)
	b.WriteString(c.extra)
	return b.String()
}

// ID is the replica's replica_id: replica-<index>.
func (r *Replica) ID() string { return "replica-" + strconv.Itoa(r.Index) }

// AuditDir is the replica's audit log directory.
func (r *Replica) AuditDir() string { return filepath.Join(r.Dir, "audit") }

// Start runs the replica's custodyd process.
func (r *Replica) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return nil
	}
	logf, err := os.OpenFile(r.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(r.bin, "--config", r.ConfigFile, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start custodyd replica %d: %w", r.Index, err)
	}
	_ = os.WriteFile(filepath.Join(r.Dir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	r.cmd, r.done = cmd, done
	return nil
}

// Running reports whether the process is up (as far as Start/Stop know).
func (r *Replica) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return false
	}
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Stop ends the replica with SIGTERM (graceful: in-flight requests
// finish), then SIGKILL after 30s.
func (r *Replica) Stop() { r.signal(syscall.SIGTERM, 30*time.Second) }

// Kill ends the replica with SIGKILL.
func (r *Replica) Kill() { r.signal(syscall.SIGKILL, 10*time.Second) }

func (r *Replica) signal(sig syscall.Signal, grace time.Duration) {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
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

// WaitReady polls /readyz until it answers 200, the process exits or
// timeout passes.
func (r *Replica) WaitReady(ctx context.Context, timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := ctx.Err(); err != nil {
			return err
		}
		resp, err := hc.Get("http://" + r.HTTPAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if !r.Running() {
			return fmt.Errorf("custodyd replica %d exited; its log:\n%s", r.Index, Tail(r.LogFile, 15))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("custodyd replica %d not ready after %v; its log:\n%s", r.Index, timeout, Tail(r.LogFile, 15))
}

// Addrs are the replicas' gRPC addresses.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Replicas))
	for i, r := range c.Replicas {
		out[i] = r.GRPCAddr
	}
	return out
}

// Stop stops every custodyd, then every etcd member.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, r := range c.Replicas {
		wg.Go(r.Stop)
	}
	wg.Wait()
	if c.Etcd != nil {
		c.Etcd.Stop()
	}
}

// Tail returns the last n lines of a file.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
