package main

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// TestMemoryPressureRefusesNewWorkInsteadOfGrowing runs custodyd with a
// 64 MiB soft memory limit and refusal above 50% of it, and sends 32
// concurrent streams of 3.2 MiB batch encryptions for four seconds. New
// requests must be refused with UNAVAILABLE and a retry hint while the
// live heap is over the line, custodyd must stay up, and a relay must be
// served again once the load stops.
func TestMemoryPressureRefusesNewWorkInsteadOfGrowing(t *testing.T) {
	bin := buildBinary(t)
	v := startVault(t, bin, "limits:\n  memory_limit_bytes: 134217728\n  memory_refuse_percent: 50\n  max_inflight_per_identity: 1000\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cc := dialRole(t, v.dir, v.grpc, "relay")
	relay := custodyv1.NewCryptoServiceClient(cc)
	ct, err := relay.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("after the storm")})
	if err != nil {
		t.Fatal(err)
	}
	items := make([]*custodyv1.EncryptRequest, 50)
	for i := range items {
		items[i] = &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: make([]byte, 64<<10)}
	}
	big, err := proto.Marshal(&custodyv1.BatchEncryptRequest{Items: items})
	if err != nil {
		t.Fatal(err)
	}
	before := metricSum(v.metrics(t), "custody_memory_live_heap_bytes")
	var ok, shed, noHint atomic.Int64
	var otherMu sync.Mutex
	var others []error
	// The storm lasts 4 s, and longer on a busy machine until it has seen
	// both answers (each refusal is made while the storm's own requests
	// are still held, so a slow machine may refuse for a while first).
	end, hardEnd := time.Now().Add(4*time.Second), time.Now().Add(90*time.Second)
	storming := func() bool {
		now := time.Now()
		return now.Before(end) || (now.Before(hardEnd) && (ok.Load() == 0 || shed.Load() == 0))
	}
	var wg sync.WaitGroup
	for range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 2000 && storming(); n++ {
				var answer []byte
				cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
				err := cc.Invoke(cctx, custodyv1.CryptoService_BatchEncrypt_FullMethodName, &big, &answer, grpc.ForceCodec(rawCodec{}))
				ccancel()
				switch status.Code(err) {
				case codes.OK:
					ok.Add(1)
				case codes.Unavailable:
					if !strings.Contains(err.Error(), "short of memory") {
						otherMu.Lock()
						others = append(others, err)
						otherMu.Unlock()
						continue
					}
					shed.Add(1)
					if retryHint(err) <= 0 {
						noHint.Add(1)
					}
					time.Sleep(50 * time.Millisecond)
				default:
					otherMu.Lock()
					others = append(others, err)
					otherMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	select {
	case <-v.exited:
		t.Fatalf("custodyd died under memory pressure: %s", tail(v.stderr.String(), 2048))
	default:
	}
	hwm := statusKB(v.pid(), "VmHWM")
	body := v.metrics(t)
	t.Logf("live heap before %.1f MiB", before/(1<<20))
	t.Logf("memory storm: %d batches of 3.2 MiB served, %d refused UNAVAILABLE (memory); custody_inflight_refusals_total{memory} %.0f; peak RSS %d MiB; live heap now %.1f MiB",
		ok.Load(), shed.Load(), metricSum(body, "custody_inflight_refusals_total", `reason="memory"`), hwm>>10, metricSum(body, "custody_memory_live_heap_bytes")/(1<<20))
	if len(others) > 0 {
		t.Fatalf("%d calls failed otherwise, e.g. %v", len(others), others[0])
	}
	if shed.Load() == 0 || ok.Load() == 0 {
		t.Fatalf("%d served, %d refused for memory; want both", ok.Load(), shed.Load())
	}
	if noHint.Load() > 0 {
		t.Fatalf("%d memory refusals carried no RetryInfo", noHint.Load())
	}
	if got := metricSum(body, "custody_inflight_refusals_total", `reason="memory"`); got < float64(shed.Load()) {
		t.Fatalf("custody_inflight_refusals_total{memory} = %.0f, clients saw %d", got, shed.Load())
	}
	// Once the load is gone the relay is served again, without a restart.
	deadline := time.Now().Add(15 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		pt, err := relay.Decrypt(cctx, &custodyv1.DecryptRequest{KeyName: "demo", Ciphertext: ct.Ciphertext})
		ccancel()
		if err == nil && string(pt.Plaintext) == "after the storm" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("15s after the storm the relay is still refused: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
