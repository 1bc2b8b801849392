package main

// Helpers for the hostile-load tests: a real custodyd started from a
// config file with a limits section, metrics scraping, process figures
// from /proc, and a raw HTTP/2 client for frame-level attacks.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/pki"
)

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// loadVault is a real custodyd process started from a config file.
type loadVault struct {
	dir                 string
	cmd                 *exec.Cmd
	grpc, http, gateway string
	stderr              *syncBuffer
	caFile              string
	certFile, keyFile   map[string]string
	exited              chan struct{}
}

var servingRE = regexp.MustCompile(`msg="custodyd serving" grpc=(\S+) http=(\S+) gateway=(\S+)`)

// startVault runs bin with a dev-mode config (SoftHSM token, dev CA, the
// demo key granted to every relay for encrypt and decrypt) plus limits, a
// YAML "limits:" section. relays names extra relay identities beyond
// "relay".
func startVault(t *testing.T, bin, limits string, relays ...string) *loadVault {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", "") // PrepareDev sets it for this process; restored after the test
	dir := t.TempDir()
	_, cfg, err := daemon.PrepareDev(dir, "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pk, err := pki.GenerateDev(filepath.Join(dir, "pki"), append(append([]string{}, daemon.DevRoles...), relays...))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "dev: true\nlisten: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\ngateway_listen: 127.0.0.1:0\n")
	fmt.Fprintf(&b, "tls: {cert_file: %q, key_file: %q, client_ca_file: %q}\n", pk.ServerCertFile, pk.ServerKeyFile, pk.CAFile)
	fmt.Fprintf(&b, "hsm: {uri: %q, pin_file: %q}\n", cfg.HSM.URI, cfg.HSM.PINFile)
	fmt.Fprintf(&b, "store: {path: %q}\naudit: {dir: %q}\nkeys: {destroy_wait_min: 1s}\nidentities:\n", cfg.Store.Path, cfg.Audit.Dir)
	allRelays := append([]string{"relay"}, relays...)
	for _, r := range append(append([]string{}, daemon.DevRoles[1:]...), allRelays...) {
		role := r
		if strings.HasPrefix(r, "relay") {
			role = "relay"
		}
		fmt.Fprintf(&b, "  - {name: dev-%s, role: %s, uri: %q}\n", r, role, pk.Clients[r].Identity)
	}
	b.WriteString("grants:\n")
	for _, r := range allRelays {
		fmt.Fprintf(&b, "  - {identity: dev-%s, keys: [demo], operations: [encrypt, decrypt], allow_plaintext: true}\n", r)
	}
	b.WriteString(limits)
	cfgPath := filepath.Join(dir, "custodyd.yaml")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	v := &loadVault{dir: dir, stderr: &syncBuffer{}, caFile: pk.CAFile, certFile: map[string]string{}, keyFile: map[string]string{}, exited: make(chan struct{})}
	for name, c := range pk.Clients {
		v.certFile[name], v.keyFile[name] = c.CertFile, c.KeyFile
	}
	v.cmd = exec.Command(bin, "--config", cfgPath, "--pprof")
	v.cmd.Env = os.Environ()
	v.cmd.Stderr = v.stderr
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.cmd.Wait(); close(v.exited) }()
	t.Cleanup(func() {
		v.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-v.exited:
		case <-time.After(30 * time.Second):
			v.cmd.Process.Kill()
			<-v.exited
		}
		if t.Failed() {
			t.Logf("custodyd stderr (last 4 KiB):\n%s", tail(v.stderr.String(), 4096))
		}
	})
	deadline := time.Now().Add(90 * time.Second)
	for {
		if m := servingRE.FindStringSubmatch(v.stderr.String()); m != nil {
			v.grpc, v.http, v.gateway = m[1], m[2], m[3]
			return v
		}
		select {
		case <-v.exited:
			t.Fatalf("custodyd exited at start: %s", v.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("custodyd did not start within 90s: %s", v.stderr.String())
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

func (v *loadVault) pid() int { return v.cmd.Process.Pid }

// tlsConfig is the client TLS configuration of the named certificate.
func (v *loadVault) tlsConfig(t *testing.T, client string) *tls.Config {
	t.Helper()
	c, err := pki.ClientTLSConfig(v.caFile, v.certFile[client], v.keyFile[client], "localhost")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// get fetches a path of the metrics/health listener with a short timeout.
func (v *loadVault) get(path string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + v.http + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metrics scrapes /metrics.
func (v *loadVault) metrics(t *testing.T) string {
	t.Helper()
	code, body, err := v.get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	return body
}

// metricSum adds up the series of name whose labels include every
// k="v" in labels.
func metricSum(body, name string, labels ...string) float64 {
	sum := 0.0
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		series := line[:i]
		if series != name && !strings.HasPrefix(series, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(series, l) {
				ok = false
			}
		}
		if ok {
			if f, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				sum += f
			}
		}
	}
	return sum
}

// openFDs counts the descriptors the process has open.
func openFDs(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// cpuSeconds is the process's user plus system CPU time.
func cpuSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start at ") ".
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// statusKB reads a "VmHWM:"-style line of /proc/pid/status in KiB.
func statusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == field+":" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return -1
}

// goroutines reads custodyd's goroutine count from /debug/pprof.
func (v *loadVault) goroutines() int {
	_, body, err := v.get("/debug/pprof/goroutine?debug=1")
	if err != nil {
		return -1
	}
	var n int
	if _, err := fmt.Sscanf(body, "goroutine profile: total %d", &n); err != nil {
		return -1
	}
	return n
}

// testFDLimit raises this process's descriptor soft limit to its hard
// limit and returns it.
func testFDLimit(t *testing.T) int {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return int(min(rl.Cur, 1<<30))
}

// percentile returns the p-th percentile (0..100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// rawDial opens a TCP connection from the loopback address src whose
// Close sends a reset (no TIME_WAIT left on this host). It returns nil if
// the connection failed or was reset at once.
func rawDial(addr string, src net.IP) net.Conn {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 3 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil
	}
	c.(*net.TCPConn).SetLinger(0)
	return c
}

// h2conn is a raw HTTP/2 client connection over mTLS, for frame-level
// attacks that no well-behaved client library can make.
type h2conn struct {
	tc      *tls.Conn
	fr      *http2.Framer
	wmu     sync.Mutex
	hbuf    bytes.Buffer
	henc    *hpack.Encoder
	goaways chan goAway
	done    chan struct{}
	err     error
}

// goAway is a received GOAWAY frame.
type goAway struct {
	code  http2.ErrCode
	debug string
}

// dialH2 connects as client, sends the preface and settings, and starts a
// reader that answers SETTINGS, keeps GOAWAY frames and drops the rest.
func (v *loadVault) dialH2(t *testing.T, client string) *h2conn {
	t.Helper()
	cfg := v.tlsConfig(t, client)
	cfg.NextProtos = []string{"h2"}
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", v.grpc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &h2conn{tc: tc, fr: http2.NewFramer(tc, tc), goaways: make(chan goAway, 4), done: make(chan struct{})}
	h.henc = hpack.NewEncoder(&h.hbuf)
	t.Cleanup(func() { tc.Close(); <-h.done })
	if _, err := tc.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	go h.read()
	return h
}

func (h *h2conn) read() {
	defer close(h.done)
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.err = err
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.wmu.Lock()
				h.fr.WriteSettingsAck()
				h.wmu.Unlock()
			}
		case *http2.GoAwayFrame:
			select {
			case h.goaways <- goAway{code: f.ErrCode, debug: string(f.DebugData())}:
			default:
			}
		}
	}
}

// openStream sends HEADERS for a gRPC call of method on stream id.
func (h *h2conn) openStream(id uint32, method string, endStream bool) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	h.hbuf.Reset()
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":path", method}, {":authority", "localhost"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		h.henc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.hbuf.Bytes(), EndHeaders: true, EndStream: endStream})
}

func (h *h2conn) reset(id uint32) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	return h.fr.WriteRSTStream(id, http2.ErrCodeCancel)
}

func (h *h2conn) ping(n uint64) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	var d [8]byte
	for i := range d {
		d[i] = byte(n >> (8 * i))
	}
	return h.fr.WritePing(false, d)
}

// awaitGoAway waits for a GOAWAY frame until ctx ends.
func (h *h2conn) awaitGoAway(ctx context.Context) (goAway, error) {
	select {
	case g := <-h.goaways:
		return g, nil
	case <-h.done:
		select {
		case g := <-h.goaways:
			return g, nil
		default:
			return goAway{}, fmt.Errorf("connection ended without GOAWAY: %v", h.err)
		}
	case <-ctx.Done():
		return goAway{}, ctx.Err()
	}
}
