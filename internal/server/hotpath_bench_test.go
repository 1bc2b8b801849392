package server_test

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/testenv"
)

// The request hot path in one process: a real custodyd (SoftHSM token,
// bbolt, durable audit log) called over gRPC with mTLS on loopback. CPU
// and allocations per operation include the client's; compare runs, not
// absolute figures. make bench measures the daemon and client apart.
//
//	go test -run '^$' -bench HotPath -benchmem ./internal/server/

func hotPathEnv(b *testing.B) (custodyv1.CryptoServiceClient, []byte, map[string]string) {
	e := testenv.Start(b, testenv.Settings{Mutate: testenv.Grant("relay", []string{"enc"}, allOps, true)})
	e.CreateKey(b, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c := e.Crypto(b, "relay")
	encCtx := map[string]string{"tenant": "bench"}
	ct, err := c.Encrypt(context.Background(), &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: make([]byte, 32), Context: encCtx})
	if err != nil {
		b.Fatal(err)
	}
	return c, ct.Ciphertext, encCtx
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runParallel runs fn b.N times over workers goroutines and reports the
// CPU time per operation: on a shared machine it moves less than ns/op.
func runParallel(b *testing.B, workers int, fn func() error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu0 := cpuTime(b)
	defer func() {
		b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	}()
	b.ResetTimer()
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := fn(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkHotPathDecrypt(b *testing.B) {
	c, ct, encCtx := hotPathEnv(b)
	req := &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct, Context: encCtx}
	b.ReportAllocs()
	for _, workers := range []int{1, 8} {
		b.Run(map[int]string{1: "c1", 8: "c8"}[workers], func(b *testing.B) {
			b.ReportAllocs()
			runParallel(b, workers, func() error {
				_, err := c.Decrypt(context.Background(), req)
				return err
			})
		})
	}
}

func BenchmarkHotPathBatchDecrypt100(b *testing.B) {
	c, ct, encCtx := hotPathEnv(b)
	items := make([]*custodyv1.DecryptRequest, 100)
	for i := range items {
		items[i] = &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct, Context: encCtx}
	}
	req := &custodyv1.BatchDecryptRequest{Items: items}
	b.ReportAllocs()
	runParallel(b, 4, func() error {
		_, err := c.BatchDecrypt(context.Background(), req)
		return err
	})
	b.ReportMetric(float64(b.N*len(items))/b.Elapsed().Seconds(), "items/s")
}
