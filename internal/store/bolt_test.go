package store_test

import (
	"bytes"
	"context"
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
	s := storetest.Authenticated(t, openBolt(t, path, store.BoltOptions{}), sealer)
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

	s = storetest.Authenticated(t, openBolt(t, path, store.BoltOptions{}), sealer)
	if _, err := s.Get(ctx, "policy/relay-1"); !errors.Is(err, store.ErrTampered) {
		t.Fatalf("get of edited record: got %v, want ErrTampered", err)
	}
}

func TestAuthenticatedDetectsValueMovedInBoltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	sealer := storetest.NewHMACSealer(t)
	s := storetest.Authenticated(t, openBolt(t, path, store.BoltOptions{}), sealer)
	ctx := t.Context()
	if err := store.Put(ctx, s, "grants/alice", []byte("decrypt")); err != nil {
		t.Fatal(err)
	}
	s.Close()

	editBoltFile(t, path, func(b *bolt.Bucket) error {
		rec := append([]byte(nil), b.Get([]byte("grants/alice"))...)
		return b.Put([]byte("grants/mallory"), rec)
	})

	// The copy adds a record the anchor does not know: refused at open.
	raw := openBolt(t, path, store.BoltOptions{})
	if _, err := store.Authenticated(ctx, raw, sealer, store.AuthOptions{}); !errors.Is(err, store.ErrRolledBack) {
		t.Fatalf("open with a moved record: got %v, want ErrRolledBack", err)
	}
	raw.Close()
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

// copyFile copies a closed bbolt file (an operator's backup).
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Someone with the store file restores one record from an older copy (a
// grant an executed proposal removed, a budget before it was spent): its
// seal still verifies, but its write revision no longer matches the anchor.
func TestAuthenticatedRefusesOneRecordRolledBackFromAnOlderCopy(t *testing.T) {
	dir := t.TempDir()
	path, backup := filepath.Join(dir, "store.db"), filepath.Join(dir, "backup.db")
	sealer := storetest.NewHMACSealer(t)
	ctx := t.Context()
	s := storetest.Authenticated(t, openBolt(t, path, store.BoltOptions{}), sealer)
	if err := store.Put(ctx, s, "gov/state", []byte(`{"frozen":false}`)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	copyFile(t, path, backup)
	s = storetest.Authenticated(t, openBolt(t, path, store.BoltOptions{}), sealer)
	if err := store.Put(ctx, s, "gov/state", []byte(`{"frozen":true}`)); err != nil {
		t.Fatal(err)
	}
	newer := s.Anchor()
	s.Close()

	var old []byte
	bdb, err := bolt.Open(backup, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = bdb.View(func(tx *bolt.Tx) error {
		old = append([]byte(nil), tx.Bucket([]byte("kv")).Get([]byte("gov/state"))...)
		return nil
	})
	bdb.Close()
	editBoltFile(t, path, func(b *bolt.Bucket) error { return b.Put([]byte("gov/state"), old) })
	raw := openBolt(t, path, store.BoltOptions{})
	if _, err := store.Authenticated(ctx, raw, sealer, store.AuthOptions{}); !errors.Is(err, store.ErrRolledBack) {
		t.Fatalf("open with one record rolled back: %v, want ErrRolledBack", err)
	}
	raw.Close()

	// The whole older file opens (it is consistent), but its anchor says it
	// is older: audit checkpoints record the newer revision.
	s = storetest.Authenticated(t, openBolt(t, backup, store.BoltOptions{}), sealer)
	if got := s.Anchor().Revision; got >= newer.Revision {
		t.Fatalf("older copy has anchor revision %d, newer store %d", got, newer.Revision)
	}
}

func TestAuthenticatedRefusesADeletedRecordOrAnchor(t *testing.T) {
	for _, victim := range []string{"keys/a", store.AnchorKey} {
		path := filepath.Join(t.TempDir(), "store.db")
		sealer := storetest.NewHMACSealer(t)
		s := storetest.Authenticated(t, openBolt(t, path, store.BoltOptions{}), sealer)
		for _, k := range []string{"keys/a", "keys/b"} {
			if err := store.Put(t.Context(), s, k, []byte("v")); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		editBoltFile(t, path, func(b *bolt.Bucket) error { return b.Delete([]byte(victim)) })
		raw := openBolt(t, path, store.BoltOptions{})
		if _, err := store.Authenticated(t.Context(), raw, sealer, store.AuthOptions{}); !errors.Is(err, store.ErrRolledBack) {
			t.Errorf("deleted %s: %v, want ErrRolledBack", victim, err)
		}
		raw.Close()
	}
}

// Stored data keys are sealed and bound to a revision but kept out of the
// anchor: writing them does not move it.
func TestUnanchoredRecordsDoNotMoveTheAnchor(t *testing.T) {
	s := storetest.Authenticated(t, openBolt(t, filepath.Join(t.TempDir(), "store.db"), store.BoltOptions{}), storetest.NewHMACSealer(t))
	if err := store.Put(t.Context(), s, "keys/a", []byte("v")); err != nil {
		t.Fatal(err)
	}
	before := s.Anchor()
	for i := range 5 {
		if err := store.Put(t.Context(), s, fmt.Sprintf("dk/a/x/%d", i), []byte("wrapped")); err != nil {
			t.Fatal(err)
		}
	}
	if s.Anchor() != before {
		t.Fatalf("anchor moved from %v to %v on unanchored writes", before, s.Anchor())
	}
}

// flakySealer's HSM is unreachable: its errors must read as unavailability.
type flakySealer struct {
	*storetest.HMACSealer
	down bool
}

func (f *flakySealer) Open(ctx context.Context, k string, sealed []byte) ([]byte, error) {
	if f.down {
		return nil, errors.New("hsm: device removed")
	}
	return f.HMACSealer.Open(ctx, k, sealed)
}

func TestAnHSMOutageIsUnavailableNotTampering(t *testing.T) {
	f := &flakySealer{HMACSealer: storetest.NewHMACSealer(t)}
	s := storetest.Authenticated(t, openBolt(t, filepath.Join(t.TempDir(), "store.db"), store.BoltOptions{}), f)
	if err := store.Put(t.Context(), s, "keys/a", []byte("v")); err != nil {
		t.Fatal(err)
	}
	f.down = true
	_, err := s.Get(t.Context(), "keys/a")
	if !errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrTampered) {
		t.Fatalf("get while the hsm is down: %v, want ErrUnavailable and not ErrTampered", err)
	}
	f.down = false
	if _, err := s.Get(t.Context(), "keys/a"); err != nil {
		t.Fatalf("after the hsm is back: %v", err)
	}
}

// A store written before anchors existed is verified and re-sealed once.
func TestAuthenticatedReSealsAPreAnchorStoreOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	sealer := storetest.NewHMACSealer(t)
	raw := openBolt(t, path, store.BoltOptions{})
	for _, k := range []string{"keys/a", "gov/state", "dk/a/x"} {
		legacy, _ := sealer.Seal(t.Context(), k, []byte("old-"+k)) // value || tag, no revision
		if err := store.Put(t.Context(), raw, k, legacy); err != nil {
			t.Fatal(err)
		}
	}
	s := storetest.Authenticated(t, raw, sealer)
	for _, k := range []string{"keys/a", "gov/state", "dk/a/x"} {
		if kv, err := s.Get(t.Context(), k); err != nil || string(kv.Value) != "old-"+k {
			t.Fatalf("%s after re-sealing: %q %v", k, kv.Value, err)
		}
	}
	if s.Anchor().Revision == 0 {
		t.Fatal("re-sealed store has no anchor")
	}
	// A forged pre-anchor value is refused, not re-sealed.
	s.Close()
	raw = openBolt(t, path, store.BoltOptions{})
	if err := store.Put(t.Context(), raw, "keys/b", []byte("forged-without-a-tag-of-32-bytes-or-more")); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Authenticated(t.Context(), raw, sealer, store.AuthOptions{}); err == nil {
		t.Fatal("a forged record was accepted")
	}
	raw.Close()
}

func TestBoltElectorConformance(t *testing.T) {
	storetest.RunElectorConformance(t, func(t *testing.T) store.Store {
		return openBolt(t, filepath.Join(t.TempDir(), "store.db"), store.BoltOptions{})
	}, nil)
}
