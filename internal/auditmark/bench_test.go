package auditmark

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
	"sync"
	"testing"

	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/audit"
)

// BenchmarkMarkWrite is one write of the mark to a SoftHSM token (a new
// data object replaces the old one): what a checkpoint costs the HSM.
func BenchmarkMarkWrite(b *testing.B) {
	m, _ := hsmtest.Open(b)
	w := NewWriter(Options{Logger: quiet()})
	w.Arm(m, nil)
	ctx := context.Background()
	cp := audit.Checkpoint{Seq: 1, Head: make([]byte, 32), InstanceID: "bench", Signature: make([]byte, 72)}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cp.Seq++
		_ = w.Anchor(ctx, cp)
		if err := w.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStartCheck100k is the start-up check of a ~100,000-record audit
// directory against a mark at its head (the mark's record and what follows
// are verified); BenchmarkPrefixCheck100k the background check of the
// records before it.
func BenchmarkStartCheck100k(b *testing.B) {
	mark, pos, key := benchDir(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := Check(mark, pos, &key.PublicKey); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPrefixCheck100k(b *testing.B) {
	mark, pos, key := benchDir(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := VerifyPrefix(context.Background(), mark, pos.AuditDir, &key.PublicKey); err != nil {
			b.Fatal(err)
		}
	}
}

// benchDir writes a ~100,000-record audit directory and its mark.
func benchDir(b *testing.B) (*Mark, Position, *ecdsa.PrivateKey) {
	key, err := newBenchKey()
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(b.TempDir(), "audit")
	l, err := audit.Open(context.Background(), dir, key, audit.Options{CheckpointEvery: 1 << 40, CheckpointInterval: -1, InstanceID: "vault", Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	// 64 writers, so that appends are group-committed.
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000/64+1; i++ {
				_, _ = l.Append(context.Background(), audit.Record{Identity: "spiffe://t/relay", Method: "Decrypt", Key: "k", Outcome: audit.OutcomeOK, Code: "OK"})
			}
		}()
	}
	wg.Wait()
	cp, err := l.Checkpoint(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	l.Close(context.Background())
	mark := &Mark{Format: Format, Checkpoint: cp}
	return mark, Position{AuditDir: dir, Head: cp.Seq, LatestCheckpoint: cp.Seq}, key
}

func newBenchKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
