package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/store/storetest"
)

func openBolt(t testing.TB, path string, opts store.BoltOptions) *store.Bolt {
	t.Helper()
	s, err := store.OpenBolt(path, opts)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestBoltConformance(t *testing.T) {
	storetest.RunConformance(t, func(t *testing.T) store.Store {
		return openBolt(t, filepath.Join(t.TempDir(), "store.db"), store.BoltOptions{})
	})
}

func TestBoltReopenKeepsValuesAndRevisions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openBolt(t, path, store.BoltOptions{})
	ctx := t.Context()
	for _, k := range []string{"a", "b", "c"} {
		if err := store.Put(ctx, s, k, []byte("v-"+k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Delete(ctx, s, "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openBolt(t, path, store.BoltOptions{})
	if rev, err := s.Revision(ctx); err != nil || rev != 4 {
		t.Fatalf("revision after reopen = %d, %v; want 4", rev, err)
	}
	kvs, err := s.List(ctx, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 2 || kvs[0].Key != "a" || string(kvs[0].Value) != "v-a" || kvs[0].Revision != 1 ||
		kvs[1].Key != "c" || kvs[1].Revision != 3 {
		t.Fatalf("after reopen: %+v", kvs)
	}
	if err := store.Put(ctx, s, "d", nil); err != nil {
		t.Fatal(err)
	}
	if kv, err := s.Get(ctx, "d"); err != nil || kv.Revision != 5 {
		t.Fatalf("revision continues after reopen: %+v, %v", kv, err)
	}
}

func TestBoltSecondOpenFailsFastWithErrLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	openBolt(t, path, store.BoltOptions{})
	start := time.Now()
	s, err := store.OpenBolt(path, store.BoltOptions{OpenTimeout: 100 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("second open of a locked file succeeded")
	}
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("second open took %v", took)
	}
}

func TestBoltCreatesFileWithMode0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	openBolt(t, path, store.BoltOptions{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("mode %#o, want 0600", perm)
	}
}

func TestBoltRefusesGroupReadableFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openBolt(t, path, store.BoltOptions{})
	s.Close()
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if s, err := store.OpenBolt(path, store.BoltOptions{}); !errors.Is(err, store.ErrInsecureFile) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("open of 0640 file: got %v, want ErrInsecureFile", err)
	}
}

func TestBoltSlowWatcherIsEndedWithErrWatchLagged(t *testing.T) {
	s := openBolt(t, filepath.Join(t.TempDir(), "store.db"), store.BoltOptions{WatchBuffer: 4})
	ctx := t.Context()
	slow, err := s.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := store.Put(ctx, s, "k", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []store.Event
	for ev := range slow {
		got = append(got, ev)
	}
	if len(got) != 5 || !errors.Is(got[4].Err, store.ErrWatchLagged) {
		t.Fatalf("slow watcher got %d events, last %+v; want 4 then ErrWatchLagged", len(got), got[len(got)-1])
	}
	for i, ev := range got[:4] {
		if ev.KV.Revision != int64(i+1) {
			t.Fatalf("event %d has revision %d", i, ev.KV.Revision)
		}
	}
	// A new watch after lagging works.
	fresh, err := s.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, s, "k", []byte("next")); err != nil {
		t.Fatal(err)
	}
	if ev := <-fresh; ev.Err != nil || ev.KV.Revision != 11 {
		t.Fatalf("fresh watch: %+v", ev)
	}
}

// editBoltFile changes the stored record of key directly in the bbolt file,
// as an attacker with write access to the disk would.
func editBoltFile(t *testing.T, path string, edit func(kv *bolt.Bucket) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("kv"))
		if b == nil {
			return errors.New("no kv bucket")
		}
		return edit(b)
	}); err != nil {
		t.Fatal(err)
	}
}

func TestAuthenticatedDetectsValueEditedInBoltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	sealer := storetest.NewHMACSealer(t)
	s := store.Authenticated(openBolt(t, path, store.BoltOptions{}), sealer)
	ctx := t.Context()
	if err := store.Put(ctx, s, "policy/relay-1", []byte(`{"max_per_hour":100}`)); err != nil {
		t.Fatal(err)
	}
	s.Close()

	editBoltFile(t, path, func(b *bolt.Bucket) error {
		rec := b.Get([]byte("policy/relay-1"))
		edited := bytes.Replace(rec, []byte("100"), []byte("999"), 1)
		if bytes.Equal(edited, rec) {
			return errors.New("plaintext not found in record")
		}
		return b.Put([]byte("policy/relay-1"), edited)
	})

	s = store.Authenticated(openBolt(t, path, store.BoltOptions{}), sealer)
	if _, err := s.Get(ctx, "policy/relay-1"); !errors.Is(err, store.ErrTampered) {
		t.Fatalf("get of edited record: got %v, want ErrTampered", err)
	}
}

func TestAuthenticatedDetectsValueMovedInBoltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	sealer := storetest.NewHMACSealer(t)
	s := store.Authenticated(openBolt(t, path, store.BoltOptions{}), sealer)
	ctx := t.Context()
	if err := store.Put(ctx, s, "grants/alice", []byte("decrypt")); err != nil {
		t.Fatal(err)
	}
	s.Close()

	editBoltFile(t, path, func(b *bolt.Bucket) error {
		rec := append([]byte(nil), b.Get([]byte("grants/alice"))...)
		return b.Put([]byte("grants/mallory"), rec)
	})

	s = store.Authenticated(openBolt(t, path, store.BoltOptions{}), sealer)
	if _, err := s.Get(ctx, "grants/mallory"); !errors.Is(err, store.ErrTampered) {
		t.Fatalf("get of moved record: got %v, want ErrTampered", err)
	}
	if kv, err := s.Get(ctx, "grants/alice"); err != nil || string(kv.Value) != "decrypt" {
		t.Fatalf("original record: %q, %v", kv.Value, err)
	}
}

func TestBoltRejectsCorruptRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openBolt(t, path, store.BoltOptions{})
	if err := store.Put(t.Context(), s, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	editBoltFile(t, path, func(b *bolt.Bucket) error { return b.Put([]byte("k"), []byte{1, 2}) })
	s = openBolt(t, path, store.BoltOptions{})
	if _, err := s.Get(t.Context(), "k"); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("get of short record: got %v, want ErrCorrupt", err)
	}
}

// BenchmarkBoltGet measures point reads in a store of 100k keys.
func BenchmarkBoltGet(b *testing.B) {
	const n = 100_000
	s := openBolt(b, filepath.Join(b.TempDir(), "store.db"), store.BoltOptions{})
	ctx := b.Context()
	value := bytes.Repeat([]byte("m"), 128) // about the size of a key-version record
	ops := make([]store.Op, 0, store.MaxTxnOps)
	for i := range n {
		ops = append(ops, store.PutOp(fmt.Sprintf("keys/%08d", i), value))
		if len(ops) == store.MaxTxnOps || i == n-1 {
			if err := s.Txn(ctx, nil, ops); err != nil {
				b.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		key := fmt.Sprintf("keys/%08d", (i*7919)%n)
		if _, err := s.Get(ctx, key); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func TestBoltElectorConformance(t *testing.T) {
	storetest.RunElectorConformance(t, func(t *testing.T) store.Store {
		return openBolt(t, filepath.Join(t.TempDir(), "store.db"), store.BoltOptions{})
	}, nil)
}
