package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// TestHTTP2RapidResetKeepsOthersServedAndCPUBounded opens and cancels
// streams on one connection as fast as it can (CVE-2023-44487) for five
// seconds. grpc-go's mitigation (v1.85: at most MaxConcurrentStreams
// handlers per connection, the reader blocks beyond) must keep custodyd's
// goroutines and CPU bounded, and another relay's Decrypts must succeed.
func TestHTTP2RapidResetKeepsOthersServedAndCPUBounded(t *testing.T) {
	bin := buildBinary(t)
	v := startVault(t, bin, "", "relay2")
	pid := v.pid()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := custodyv1.NewCryptoServiceClient(dialRole(t, v.dir, v.grpc, "relay2"))
	ct, err := b.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("b")})
	if err != nil {
		t.Fatal(err)
	}
	baseGoroutines := v.goroutines()
	h := v.dialH2(t, "relay")

	var sent atomic.Int64
	done := make(chan struct{})
	cpu0, wall0 := cpuSeconds(t, pid), time.Now()
	go func() {
		defer close(done)
		deadline := time.Now().Add(5 * time.Second)
		for id := uint32(1); id < 1<<30 && time.Now().Before(deadline); id += 2 {
			h.tc.SetWriteDeadline(deadline)
			if h.openStream(id, custodyv1.CryptoService_Decrypt_FullMethodName, false) != nil || h.reset(id) != nil {
				return
			}
			sent.Add(1)
		}
	}()
	var lat []time.Duration
	peakG := 0
	for i := 0; ; i++ {
		select {
		case <-done:
		default:
			if n := v.goroutines(); n > peakG {
				peakG = n
			}
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			t0 := time.Now()
			_, err := b.Decrypt(cctx, &custodyv1.DecryptRequest{KeyName: "demo", Ciphertext: ct.Ciphertext})
			lat = append(lat, time.Since(t0))
			ccancel()
			if err != nil {
				t.Fatalf("relay B's decrypt %d during the rapid reset: %v", i, err)
			}
			continue
		}
		break
	}
	wall := time.Since(wall0).Seconds()
	cpu := cpuSeconds(t, pid) - cpu0
	t.Logf("rapid reset: %d streams opened and reset in %.1fs on one connection; custodyd CPU %.2fs (%.2f cores, %.1fµs per stream); goroutines %d before, peak %d; relay B: %d decrypts, p50 %s, p99 %s",
		sent.Load(), wall, cpu, cpu/wall, 1e6*cpu/float64(max(sent.Load(), 1)), baseGoroutines, peakG, len(lat), percentile(lat, 50), percentile(lat, 99))
	if sent.Load() < 1000 {
		t.Fatalf("only %d streams were sent: the attack did not run", sent.Load())
	}
	if len(lat) == 0 {
		t.Fatal("relay B made no call during the attack")
	}
	// Each canceled stream may hold a handler goroutine, at most 128 per
	// connection; anything near the number of streams sent means the
	// mitigation is gone.
	if peakG > baseGoroutines+2*128 {
		t.Errorf("goroutines peaked at %d (%d before the attack); one connection may hold at most 128 handlers", peakG, baseGoroutines)
	}
	// A single attacking connection is served by one reader: it must not
	// take both cores of this machine.
	if cpu/wall > 1.5 {
		t.Errorf("custodyd used %.2f cores against one rapid-reset connection", cpu/wall)
	}
}

// TestKeepaliveEnforcementAndIdleReaping: a client pinging faster than
// limits.keepalive.min_time is sent GOAWAY "too_many_pings" and cut off,
// and a connection without calls is closed after max_connection_idle.
func TestKeepaliveEnforcementAndIdleReaping(t *testing.T) {
	bin := buildBinary(t)
	v := startVault(t, bin, "limits:\n  keepalive: {min_time: 10s, max_connection_idle: 1s}\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	pinger := v.dialH2(t, "relay")
	for i := range 10 {
		if err := pinger.ping(uint64(i)); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	g, err := pinger.awaitGoAway(ctx)
	if err != nil || g.code != http2.ErrCodeEnhanceYourCalm || g.debug != "too_many_pings" {
		t.Fatalf("ping flood: GOAWAY %v %q, %v; want ENHANCE_YOUR_CALM too_many_pings", g.code, g.debug, err)
	}

	idle := v.dialH2(t, "relay")
	start := time.Now()
	g, err = idle.awaitGoAway(ctx)
	el := time.Since(start)
	if err != nil || g.code != http2.ErrCodeNo {
		t.Fatalf("idle connection: GOAWAY %v, %v", g.code, err)
	}
	// max_connection_idle is 1s; grpc-go checks it with up to ±10% jitter.
	if el < 800*time.Millisecond || el > 10*time.Second {
		t.Fatalf("idle connection closed after %s; max_connection_idle is 1s", el)
	}
}

// TestMaxConnectionsAboveDescriptorLimitRefusesStart: a configured
// connection cap that the descriptor limit cannot honour stops start-up
// with one line naming the field, before the HSM is touched.
func TestMaxConnectionsAboveDescriptorLimitRefusesStart(t *testing.T) {
	bin := buildBinary(t)
	v := startVault(t, bin, "")
	cfgPath := filepath.Join(v.dir, "custodyd.yaml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(v.dir, "too-many.yaml")
	if err := os.WriteFile(bad, append(cfg, "limits:\n  max_connections: 9000000\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "--config", bad)
	cmd.Env = os.Environ()
	cmd.Stderr = &stderr
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("custodyd with max_connections 9000000: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "limits.max_connections: 9000000 exceeds") || !strings.Contains(stderr.String(), "RLIMIT_NOFILE") {
		t.Fatalf("refusal does not name the field and the descriptor limit: %s", stderr.String())
	}
}
