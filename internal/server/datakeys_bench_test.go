package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/store"
)

// benchSealer is custodyd's store sealer (internal/daemon hsmSealer): an
// HMAC-SHA256 under a non-extractable HSM key over domain || len(key) || key
// || value, appended to the value. It is repeated here because the daemon's
// is unexported; the HSM work per read (one C_Sign of HMAC) is the same.
type benchSealer struct {
	m *hsm.Module
	k hsm.Key
}

func (s *benchSealer) input(key string, value []byte) []byte {
	b := append([]byte("custody-store-v1\x00"), binary.BigEndian.AppendUint32(nil, uint32(len(key)))...)
	return append(append(b, key...), value...)
}

func (s *benchSealer) Seal(ctx context.Context, key string, value []byte) ([]byte, error) {
	mac, err := s.m.MAC(ctx, s.k, s.input(key, value))
	if err != nil {
		return nil, err
	}
	return append(append([]byte(nil), value...), mac...), nil
}

func (s *benchSealer) Open(ctx context.Context, key string, sealed []byte) ([]byte, error) {
	if len(sealed) < 32 {
		return nil, store.ErrTampered
	}
	v, mac := sealed[:len(sealed)-32], sealed[len(sealed)-32:]
	ok, err := s.m.VerifyMAC(ctx, s.k, s.input(key, v), mac)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, store.ErrTampered
	}
	return v, nil
}

// benchRecord is a stored record of the real size: context digest and a
// wrapped-key envelope (KWP-wrapped 256-bit key, IV, tag) of random bytes.
func benchRecord(b *testing.B) []byte {
	rnd := func(n int) []byte { p := make([]byte, n); rand.Read(p); return p }
	env, err := keys.NewWrappedKey(rnd(keys.KeyIDLen), 1, rnd(12), rnd(40), rnd(16))
	if err != nil {
		b.Fatal(err)
	}
	raw, err := env.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	return append([]byte{dataKeyRecordV2}, raw...)
}

// benchDigest stands for a context's keyed digest in the record paths.
var benchDigest = make([]byte, sha256.Size)

const benchSample = 4096 // ids read by the benchmark, spread over the whole key space

func benchID(i int) string { return fmt.Sprintf("conv:%09d", i) }

// loadDataKeys fills a fresh bbolt store with n stored-data-key records under
// key "relay" in transactions of store.MaxTxnOps, fsynced like production.
// benchSample of them, evenly spread, are written sealed through auth (so an
// authenticated read of them verifies); the rest are raw records of the same
// sealed length, which only need to occupy the tree. Setup is bounded by
// budget; a slower machine skips rather than runs for ever.
func loadDataKeys(b *testing.B, raw *store.Bolt, auth store.Store, n int, budget time.Duration) []string {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	rec := benchRecord(b)
	filler := append(append(make([]byte, 10), rec...), make([]byte, 32)...) // sealed length (header, record, tag)
	step := max(n/benchSample, 1)
	var sample []string
	start := time.Now()
	ops := make([]store.Op, 0, store.MaxTxnOps)
	var sealed []store.Op
	flush := func() {
		if len(ops) > 0 {
			if err := raw.Txn(ctx, nil, ops); err != nil {
				b.Skipf("loading %d entries: %v after %v (setup budget %v)", n, err, time.Since(start).Round(time.Second), budget)
			}
			ops = ops[:0]
		}
		if len(sealed) > 0 {
			if err := auth.Txn(ctx, nil, sealed); err != nil {
				b.Fatal(err)
			}
			sealed = sealed[:0]
		}
	}
	for i := range n {
		key := dataKeyPath("relay", benchDigest, benchID(i))
		if i%step == 0 && len(sample) < benchSample {
			sample = append(sample, benchID(i))
			sealed = append(sealed, store.PutOp(key, rec))
		} else {
			ops = append(ops, store.PutOp(key, filler))
		}
		if len(ops) == cap(ops) || len(sealed) == store.MaxTxnOps {
			flush()
		}
	}
	flush()
	b.Logf("loaded %d entries in %v", n, time.Since(start).Round(time.Millisecond))
	return sample
}

// BenchmarkDataKeyStoreRead measures the store read on FetchDataKey's path
// (one Get of "dk/<key>/<id>" for a random stored id) in a real bbolt file
// holding 1,000 and 1,000,000 stored data keys, both bare and through
// store.Authenticated with the HSM HMAC sealer custodyd uses. Only runs with
// -bench; the 1M setup takes tens of seconds and is skipped with -short.
//
//	go test -run '^$' -bench DataKeyStoreRead -benchtime 20000x ./internal/server/
func BenchmarkDataKeyStoreRead(b *testing.B) {
	m, _ := hsmtest.Open(b)
	macKey, _, err := m.CreateKey(context.Background(), hsm.KindHMACSHA256, "bench-store-mac")
	if err != nil {
		b.Fatal(err)
	}
	sizes := []int{1_000, 1_000_000}
	if testing.Short() {
		sizes = sizes[:1]
	}
	for _, n := range sizes {
		raw, err := store.OpenBolt(filepath.Join(b.TempDir(), "store.db"), store.BoltOptions{})
		if err != nil {
			b.Fatal(err)
		}
		auth, err := store.Authenticated(context.Background(), raw, &benchSealer{m: m, k: macKey}, store.AuthOptions{Unanchored: IsStoredDataKey})
		if err != nil {
			b.Fatal(err)
		}
		sample := loadDataKeys(b, raw, auth, n, 5*time.Minute)
		if fi, err := os.Stat(raw.Path()); err == nil {
			b.Logf("store file with %d entries: %d bytes (%d per entry)", n, fi.Size(), fi.Size()/int64(n))
		}
		for _, c := range []struct {
			name string
			st   store.Store
		}{{"bolt", raw}, {"bolt+hsm-mac", auth}} {
			b.Run(fmt.Sprintf("entries=%d/%s", n, c.name), func(b *testing.B) {
				ctx := context.Background()
				r := mrand.New(mrand.NewPCG(1, 2))
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					id := sample[r.IntN(len(sample))]
					kv, err := c.st.Get(ctx, dataKeyPath("relay", benchDigest, id))
					if err != nil {
						b.Fatal(err)
					}
					if c.st == store.Store(auth) && kv.Value[0] != dataKeyRecordV2 {
						b.Fatal("not a stored data key record")
					}
				}
			})
		}
		raw.Close()
	}
}
