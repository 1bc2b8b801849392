package netlimit

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/custodyhq/custody/internal/pki"
)

// server is a listener under a budget on 127.0.0.1 whose accepted
// connections are handed to the test and never read by the server.
type server struct {
	b        *Budget
	l        *Listener
	accepted chan net.Conn
	m        *Metrics
	reg      *prometheus.Registry
}

func newServer(t *testing.T, lim Limits) *server {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	lim.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := NewBudget(lim, m)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{b: b, l: b.Listen(inner, "test"), accepted: make(chan net.Conn, 1024), m: m, reg: reg}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := s.l.Accept()
			if err != nil {
				return
			}
			s.accepted <- c
		}
	}()
	t.Cleanup(func() {
		s.l.Close()
		<-done
		for {
			select {
			case c := <-s.accepted:
				c.Close()
			default:
				return
			}
		}
	})
	return s
}

// dialFrom connects from the loopback address src (any of 127/8).
func (s *server) dialFrom(t *testing.T, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", s.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refusedFrom reports whether a connection from src is closed by the
// server at once (the reset may even beat the dial's return).
func (s *server) refusedFrom(t *testing.T, src string) bool {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", s.l.Addr().String())
	if err != nil {
		return errors.Is(err, syscall.ECONNRESET)
	}
	defer c.Close()
	return closedByServer(c, 5*time.Second)
}

// next returns the next connection the listener admitted.
func (s *server) next(t *testing.T) *Conn {
	t.Helper()
	select {
	case c := <-s.accepted:
		return c.(*Conn)
	case <-time.After(5 * time.Second):
		t.Fatal("no connection admitted within 5s")
		return nil
	}
}

// closedByServer reports whether the server closed c within d.
func closedByServer(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func alive(c net.Conn) bool { return !closedByServer(c, 100*time.Millisecond) }

func (s *server) rejected(reason string) float64 {
	return value(s.m.rejected.WithLabelValues("test", reason))
}

func (s *server) failures(reason string) float64 {
	return value(s.m.failures.WithLabelValues("test", reason))
}

func generous() Limits {
	return Limits{MaxConns: 100, MaxPerSource: 100, MaxPending: 100, PendingTimeout: time.Minute}
}

func TestPerSourceCapRefusesExcessFromOneAddressOnly(t *testing.T) {
	lim := generous()
	lim.MaxPerSource = 3
	s := newServer(t, lim)
	var mine []net.Conn
	for range 3 {
		mine = append(mine, s.dialFrom(t, "127.0.0.1"))
		s.next(t)
	}
	if !s.refusedFrom(t, "127.0.0.1") {
		t.Fatal("a 4th connection from one address was kept")
	}
	other := s.dialFrom(t, "127.0.0.2")
	s.next(t)
	if !alive(other) || !alive(mine[0]) {
		t.Fatal("connections within the caps were closed")
	}
	if got := s.rejected(RejectPerSource); got != 1 {
		t.Fatalf("rejected{per_source} = %v, want 1", got)
	}
	if st := s.b.Stats(); st.Open != 4 || st.Pending != 4 {
		t.Fatalf("stats = %+v, want 4 open, 4 pending", st)
	}
}

func TestPendingConnectionIsClosedAfterTimeoutAndCounted(t *testing.T) {
	lim := generous()
	lim.PendingTimeout = 200 * time.Millisecond
	s := newServer(t, lim)
	idle := s.dialFrom(t, "127.0.0.1")
	s.next(t)
	start := time.Now()
	if !closedByServer(idle, 10*time.Second) {
		t.Fatal("idle connection still open 10s after a 200ms handshake timeout")
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("closed after %s, before the timeout", el)
	}
	if got := s.failures(HandshakeTimeout); got != 1 {
		t.Fatalf("handshake_failures{timeout} = %v, want 1", got)
	}
	if st := s.b.Stats(); st.Open != 0 {
		t.Fatalf("stats after timeout = %+v", st)
	}
}

func TestEstablishedConnectionOutlivesTimeoutAndIsNeverEvicted(t *testing.T) {
	lim := generous()
	lim.PendingTimeout = 200 * time.Millisecond
	lim.MaxPending = 1
	s := newServer(t, lim)
	c := s.dialFrom(t, "127.0.0.1")
	sc := s.next(t)
	if !Established(sc) {
		t.Fatal("Established refused a pending connection")
	}
	// Two newcomers: with one pending slot, the first is evicted by the
	// second, but the established connection is untouched.
	n1 := s.dialFrom(t, "127.0.0.1")
	s.next(t)
	n2 := s.dialFrom(t, "127.0.0.1")
	s.next(t)
	if !closedByServer(n1, 5*time.Second) {
		t.Fatal("oldest pending connection was not evicted")
	}
	if !alive(n2) {
		t.Fatal("newest pending connection was closed")
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := sc.Write([]byte("x")); err != nil {
		t.Fatalf("established connection closed: %v", err)
	}
	buf := make([]byte, 1)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("established connection broken: %v", err)
	}
	if got := s.rejected(RejectEvicted); got != 1 {
		t.Fatalf("rejected{evicted} = %v, want 1", got)
	}
	if got := value(s.m.open.WithLabelValues("test", "established")); got != 1 {
		t.Fatalf("open{established} = %v, want 1", got)
	}
}

func TestFullBudgetOfEstablishedConnectionsRefusesNewcomers(t *testing.T) {
	lim := generous()
	lim.MaxConns = 2
	s := newServer(t, lim)
	var keep []*Conn
	for range 2 {
		s.dialFrom(t, "127.0.0.1")
		c := s.next(t)
		Established(c)
		keep = append(keep, c)
	}
	if !s.refusedFrom(t, "127.0.0.3") {
		t.Fatal("connection beyond max_connections kept")
	}
	if got := s.rejected(RejectMaxConns); got != 1 {
		t.Fatalf("rejected{max_connections} = %v", got)
	}
	// Closing one returns its place.
	keep[0].Close()
	c2 := s.dialFrom(t, "127.0.0.3")
	s.next(t)
	if !alive(c2) {
		t.Fatal("a freed place was not reused")
	}
	if st := s.b.Stats(); st.Open != 2 || st.Pending != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestBudgetFullWithPendingEvictsInsteadOfRefusing(t *testing.T) {
	lim := generous()
	lim.MaxConns = 2
	s := newServer(t, lim)
	a := s.dialFrom(t, "127.0.0.1")
	s.next(t)
	s.dialFrom(t, "127.0.0.1")
	s.next(t)
	c := s.dialFrom(t, "127.0.0.2")
	s.next(t)
	if !closedByServer(a, 5*time.Second) || !alive(c) {
		t.Fatal("a newcomer to a full budget of pending connections did not replace the oldest")
	}
}

func TestAdmitHookRefusesWithOverload(t *testing.T) {
	lim := generous()
	refuse := true
	var mu sync.Mutex
	lim.Admit = func() bool { mu.Lock(); defer mu.Unlock(); return !refuse }
	s := newServer(t, lim)
	if !s.refusedFrom(t, "127.0.0.1") {
		t.Fatal("connection kept while Admit refuses")
	}
	mu.Lock()
	refuse = false
	mu.Unlock()
	s.dialFrom(t, "127.0.0.1")
	s.next(t)
	if got := s.rejected(RejectOverload); got != 1 {
		t.Fatalf("rejected{overload} = %v", got)
	}
}

func TestTLSHandshakeThroughBudgetMarksEstablished(t *testing.T) {
	dir := t.TempDir()
	p, err := pki.GenerateDev(filepath.Join(dir, "pki"), []string{"relay"})
	if err != nil {
		t.Fatal(err)
	}
	srvCfg, err := pki.ServerTLSConfig(p.ServerCertFile, p.ServerKeyFile, p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	cliCfg, err := pki.ClientTLSConfig(p.CAFile, p.Clients["relay"].CertFile, p.Clients["relay"].KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	lim := generous()
	lim.PendingTimeout = 300 * time.Millisecond
	s := newServer(t, lim)
	raw := s.dialFrom(t, "127.0.0.1")
	sc := s.next(t)
	srv := tls.Server(sc, srvCfg)
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	cli := tls.Client(raw, cliCfg)
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !Established(srv) {
		t.Fatal("Established did not find the budget connection under *tls.Conn")
	}
	time.Sleep(500 * time.Millisecond)
	go srv.Write([]byte("ok"))
	buf := make([]byte, 2)
	cli.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(cli, buf); err != nil {
		t.Fatalf("established TLS connection closed by the handshake timeout: %v", err)
	}
	if got := s.failures(HandshakeTimeout) + s.failures(HandshakeAborted); got != 0 {
		t.Fatalf("handshake failures = %v", got)
	}
	if Established(net.Conn(&net.TCPConn{})) {
		t.Fatal("Established accepted a connection outside any budget")
	}
}

// TestConcurrentFloodNeverExceedsCaps opens connections from many
// goroutines and sources while the server establishes some and times out
// the rest; the budget never counts beyond its caps and drains to zero.
func TestConcurrentFloodNeverExceedsCaps(t *testing.T) {
	lim := Limits{MaxConns: 40, MaxPerSource: 15, MaxPending: 10, PendingTimeout: 100 * time.Millisecond}
	s := newServer(t, lim)
	stop := make(chan struct{})
	var over sync.Once
	var overErr error
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case c := <-s.accepted:
				if c.(*Conn).src == "127.0.0.9" {
					Established(c)
				}
			case <-time.After(time.Millisecond):
			}
			if st := s.b.Stats(); st.Open > lim.MaxConns || st.Pending > lim.MaxPending {
				over.Do(func() { overErr = errors.New("caps exceeded") })
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := net.IPv4(127, 0, 0, byte(2+g)).String()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
			for range 60 {
				if c, err := d.Dial("tcp", s.l.Addr().String()); err == nil {
					defer c.Close()
				}
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for s.b.Stats().Pending > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	<-sampled
	if overErr != nil {
		t.Fatal(overErr)
	}
	st := s.b.Stats()
	if st.Pending != 0 || st.Open > lim.MaxPerSource {
		t.Fatalf("after the flood: %+v (only source 127.0.0.9's established connections may stay)", st)
	}
	total := s.rejected(RejectPerSource) + s.rejected(RejectEvicted) + s.failures(HandshakeTimeout)
	if total == 0 {
		t.Fatal("a flood beyond every cap refused nothing")
	}
}

func TestNewBudgetRefusesUnusableLimits(t *testing.T) {
	for _, l := range []Limits{{}, {MaxConns: 1, MaxPerSource: 1, MaxPending: 1}, {MaxConns: 1, MaxPerSource: 0, MaxPending: 1, PendingTimeout: time.Second}} {
		if _, err := NewBudget(l, nil); !errors.Is(err, ErrInvalidLimits) {
			t.Errorf("NewBudget(%+v) = %v", l, err)
		}
	}
}

func TestSourceKeyGroupsIPv6By64(t *testing.T) {
	a := sourceKey(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:aaaa::1")})
	b := sourceKey(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:bbbb::2")})
	c := sourceKey(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:3::1")})
	if a != b || a == c {
		t.Fatalf("keys %q %q %q", a, b, c)
	}
	if k := sourceKey(&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1")}); k != "10.0.0.1" {
		t.Fatalf("v4-mapped key %q", k)
	}
}

// value reads a counter or gauge.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
