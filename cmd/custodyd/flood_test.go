package main

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// floodSource is the i-th address of the flood's sources (127.0.1.1 up),
// so the per-source cap is not what stops it.
func floodSource(i int) net.IP { return net.IPv4(127, 0, 1, byte(1+i%200)) }

// slowHello is the start of a TLS ClientHello record that announces 200
// bytes and never sends them: a handshake that never finishes.
var slowHello = []byte{0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03}

// TestConnectionFloodLeavesRelayServedAndIsCounted is the outsider attack
// of issue 17: with no certificate, hold as many idle TCP connections and
// unfinished TLS handshakes against the gRPC (and gateway) port as this
// test's descriptor limit allows (up to 20,000). custodyd must keep its own
// descriptors bounded, serve a relay's Decrypts with p99 under 200 ms while
// the flood is held, accept a new relay connection, answer /readyz, and
// count what it refused.
func TestConnectionFloodLeavesRelayServedAndIsCounted(t *testing.T) {
	fdLimit := testFDLimit(t)
	// Leave 600 descriptors for the test itself (relay, HTTP, Go runtime).
	budget := min(20000, fdLimit-600)
	if budget < 4000 {
		t.Fatalf("this test needs a descriptor limit of at least 5500 (have %d): run it under `ulimit -n 20000`", fdLimit)
	}
	const (
		greedy     = 600 // from one address: beyond max_connections_per_source
		slowTLS    = 1000
		churnRing  = 1000
		lateSlow   = 300 // opened when nothing newer follows: must time out, not be evicted
		maxPending = 512
		perSource  = 256
		handshake  = 2 * time.Second
	)
	idle := budget - greedy - slowTLS - churnRing - lateSlow
	idleGateway := idle / 10
	idleGRPC := idle - idleGateway

	bin := buildBinary(t)
	v := startVault(t, bin, "limits:\n  handshake_timeout: 2s\n  max_handshakes: 512\n  max_connections_per_source: 256\n")
	pid := v.pid()
	relay := custodyv1.NewCryptoServiceClient(dialRole(t, v.dir, v.grpc, "relay"))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ct, err := relay.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("held through the flood")})
	if err != nil {
		t.Fatal(err)
	}
	baseFDs := openFDs(pid)

	// Sample custodyd's descriptors for the whole attack.
	var peakFDs atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if n := int64(openFDs(pid)); n > peakFDs.Load() {
				peakFDs.Store(n)
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()

	var mu sync.Mutex
	var held []net.Conn
	keep := func(c net.Conn) {
		if c != nil {
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()

	// 1. One greedy address.
	for range greedy {
		keep(rawDial(v.grpc, net.IPv4(127, 0, 2, 1)))
	}

	// 2. The flood: idle connections to both client ports, unfinished TLS
	// handshakes to the gRPC port, from 200 addresses, 16 dialers at once.
	var slowConns []net.Conn
	var slowMu sync.Mutex
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	total := idleGRPC + idleGateway + slowTLS
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				switch {
				case i%(total/slowTLS) == 0:
					c := rawDial(v.grpc, floodSource(i))
					if c != nil && writeSome(c, slowHello) {
						slowMu.Lock()
						slowConns = append(slowConns, c)
						slowMu.Unlock()
					}
					keep(c)
				case i%10 == 1:
					keep(rawDial(v.gateway, floodSource(i)))
				default:
					keep(rawDial(v.grpc, floodSource(i)))
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("flood: %d connection attempts (%d idle gRPC, %d idle gateway, %d unfinished TLS, %d from one address) in %s; test descriptor limit %d",
		total+greedy, idleGRPC, idleGateway, slowTLS, greedy, time.Since(start).Round(time.Millisecond), fdLimit)

	// 3. Held and active: a churn of new idle connections keeps the
	// pending set full and evicting while the relay works.
	stopChurn := make(chan struct{})
	churned := make(chan int)
	go func() {
		ring := make([]net.Conn, 0, churnRing)
		n := 0
		defer func() {
			for _, c := range ring {
				if c != nil {
					c.Close()
				}
			}
			churned <- n
		}()
		tick := time.NewTicker(2 * time.Millisecond) // ~500 connections a second
		defer tick.Stop()
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
			select {
			case <-stopChurn:
				return
			case <-tick.C:
			}
			c := rawDial(v.grpc, floodSource(n))
			n++
			if len(ring) == churnRing {
				if ring[0] != nil {
					ring[0].Close()
				}
				ring = ring[1:]
			}
			ring = append(ring, c)
		}
	}()
	time.Sleep(500 * time.Millisecond)

	var lat []time.Duration
	for i := range 200 {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		t0 := time.Now()
		pt, err := relay.Decrypt(cctx, &custodyv1.DecryptRequest{KeyName: "demo", Ciphertext: ct.Ciphertext})
		lat = append(lat, time.Since(t0))
		ccancel()
		if err != nil || string(pt.GetPlaintext()) != "held through the flood" {
			t.Fatalf("decrypt %d during the flood: %v", i, err)
		}
	}
	p50, p99 := percentile(lat, 50), percentile(lat, 99)
	t.Logf("relay Decrypt during the held flood: p50 %s, p99 %s, max %s (200 calls)", p50, p99, percentile(lat, 100))
	if p99 >= 200*time.Millisecond {
		t.Errorf("p99 of single Decrypts during the flood = %s, want < 200ms", p99)
	}

	// A relay connecting during the flood gets in: its handshake is lost
	// only if 512 newer connections arrive while it runs.
	fresh := custodyv1.NewCryptoServiceClient(dialRole(t, v.dir, v.grpc, "relay"))
	fctx, fcancel := context.WithTimeout(ctx, 20*time.Second)
	if _, err := fresh.Decrypt(fctx, &custodyv1.DecryptRequest{KeyName: "demo", Ciphertext: ct.Ciphertext}); err != nil {
		t.Errorf("a relay connecting during the flood: %v", err)
	}
	fcancel()
	if code, body, err := v.get("/readyz"); err != nil || code != 200 || !strings.Contains(body, "ready") {
		t.Errorf("/readyz during the flood: %d %q %v", code, body, err)
	}
	close(stopChurn)
	nChurn := <-churned

	// 4. Held and quiet: unfinished handshakes that nothing newer evicts
	// are closed at the handshake deadline, however they trickle.
	var late []net.Conn
	for i := range lateSlow {
		if c := rawDial(v.grpc, floodSource(i)); c != nil && writeSome(c, slowHello) {
			late = append(late, c)
			keep(c)
		}
	}
	lateStart := time.Now()
	closedAt := make([]time.Duration, len(late))
	var lwg sync.WaitGroup
	for i, c := range late {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			trickleUntilClosed(c, 300*time.Millisecond, 15*time.Second)
			closedAt[i] = time.Since(lateStart)
		}()
	}
	lwg.Wait()
	for i, d := range closedAt {
		if d < handshake-500*time.Millisecond || d > handshake+5*time.Second {
			t.Errorf("trickling handshake %d closed after %s; handshake timeout %s", i, d, handshake)
			break
		}
	}
	close(stopSampling)
	<-sampled

	body := v.metrics(t)
	evicted := metricSum(body, "custody_connections_rejected_total", `reason="evicted"`)
	perSrc := metricSum(body, "custody_connections_rejected_total", `listener="grpc"`, `reason="per_source"`)
	gwRejected := metricSum(body, "custody_connections_rejected_total", `listener="gateway"`)
	timeouts := metricSum(body, "custody_handshake_failures_total", `listener="grpc"`, `reason="timeout"`)
	t.Logf("custodyd: descriptors %d before, peak %d; rejected: evicted %.0f, per_source %.0f, gateway %.0f; handshake timeouts %.0f; churn %d",
		baseFDs, peakFDs.Load(), evicted, perSrc, gwRejected, timeouts, nChurn)
	if peak := int(peakFDs.Load()); peak > baseFDs+maxPending+64 {
		t.Errorf("custodyd held %d descriptors (%d before the flood); the pending cap is %d", peak, baseFDs, maxPending)
	}
	if perSrc < greedy-perSource-50 {
		t.Errorf("rejected{per_source} = %.0f; %d connections came from one address with a cap of %d", perSrc, greedy, perSource)
	}
	if evicted < float64(total/2) || gwRejected == 0 {
		t.Errorf("rejected{evicted} = %.0f (gateway %.0f) after %d connections against a pending cap of %d", evicted, gwRejected, total, maxPending)
	}
	// Each late handshake is closed at its deadline: by the budget (timeout)
	// or, if a loaded machine delays that timer, by gRPC's own deadline a
	// second later (aborted).
	aborted := metricSum(body, "custody_handshake_failures_total", `listener="grpc"`, `reason="aborted"`)
	if timeouts+aborted < lateSlow || timeouts < lateSlow/2 {
		t.Errorf("handshake_failures{timeout} = %.0f, {aborted} = %.0f; want the %d late trickling handshakes, most as timeouts", timeouts, aborted, lateSlow)
	}

	// 5. Released: nothing is left pending and the descriptors come back.
	mu.Lock()
	for _, c := range held {
		c.Close()
	}
	held = nil
	mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		body := v.metrics(t)
		pending := metricSum(body, "custody_connections_open", `state="pending"`)
		if pending == 0 && openFDs(pid) <= baseFDs+16 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("15s after the flood: %.0f pending, %d descriptors (%d before)", pending, openFDs(pid), baseFDs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeSome writes p and reports whether the connection took it.
func writeSome(c net.Conn, p []byte) bool {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := c.Write(p)
	return err == nil
}

// trickleUntilClosed writes one byte every interval until the server
// closes c (or max passes) and returns how long that took.
func trickleUntilClosed(c net.Conn, interval, max time.Duration) time.Duration {
	start := time.Now()
	buf := make([]byte, 64)
	for time.Since(start) < max {
		c.SetReadDeadline(time.Now().Add(interval))
		if _, err := c.Read(buf); err != nil {
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				return time.Since(start)
			}
		}
		c.SetWriteDeadline(time.Now().Add(interval))
		if _, err := c.Write([]byte{0x42}); err != nil {
			return time.Since(start)
		}
	}
	return time.Since(start)
}
