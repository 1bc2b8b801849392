package store_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/store/etcdtest"
	"github.com/custodyhq/custody/internal/store/storetest"
)

// replicas opens n authenticated stores on one etcd prefix, each with its
// own etcd client, as n custodyd replicas do; they share the HSM key
// (sealer).
func replicas(t *testing.T, c *etcdtest.Cluster, prefix string, sealer store.Sealer, n int) []*store.AuthStore {
	t.Helper()
	var out []*store.AuthStore
	for range n {
		out = append(out, storetest.Authenticated(t, openEtcd(t, c, prefix, nil), sealer))
	}
	return out
}

// TestEtcdReplicasWritingAnchoredRecordsKeepOneVerifiableAnchor: three
// replicas write anchored records at once, to shared and to their own keys.
// Every write must land, every replica must read every other's, all must
// agree on the anchor, and a fresh start must verify the store. (With the
// anchor kept in memory by each writer, the last writer's anchor left out
// the others' records and the next start refused the store as rolled back.)
func TestEtcdReplicasWritingAnchoredRecordsKeepOneVerifiableAnchor(t *testing.T) {
	c := etcdtest.Start(t, 1)
	p := newPrefix()
	sealer := storetest.NewHMACSealer(t)
	rs := replicas(t, c, p, sealer, 3)
	ctx := t.Context()
	const each = 15
	var wg sync.WaitGroup
	errs := make(chan error, 3*each*2)
	for i, r := range rs {
		wg.Go(func() {
			for j := range each {
				if err := store.Put(ctx, r, fmt.Sprintf("keys/r%d-%d", i, j), []byte("v")); err != nil {
					errs <- fmt.Errorf("replica %d put: %w", i, err)
				}
				err := store.Update(ctx, r, "gov/counter", func(old []byte) ([]byte, error) {
					return append(old, byte('a'+i)), nil
				})
				if err != nil {
					errs <- fmt.Errorf("replica %d update: %w", i, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	for i, r := range rs {
		kv, err := r.Get(ctx, "gov/counter")
		if err != nil || len(kv.Value) != 3*each {
			t.Fatalf("replica %d reads the shared counter as %q (%v); want %d increments", i, kv.Value, err, 3*each)
		}
		kvs, err := r.List(ctx, "keys/", "", 0)
		if err != nil || len(kvs) != 3*each {
			t.Fatalf("replica %d lists %d keys (%v), want %d", i, len(kvs), err, 3*each)
		}
	}
	want := rs[0].Anchor()
	for i, r := range rs {
		if got := r.Anchor(); got != want {
			t.Errorf("replica %d anchor %v, replica 0 %v", i, got, want)
		}
	}
	// 3 replicas × each × (one put + one update).
	if want.Revision != 2*3*each {
		t.Errorf("anchor revision %d after %d anchored writes", want.Revision, 2*3*each)
	}
	fresh, err := store.Authenticated(ctx, openEtcd(t, c, p, nil), sealer, store.AuthOptions{})
	if err != nil {
		t.Fatalf("a replica starting on the store refuses it: %v", err)
	}
	if fresh.Anchor() != want {
		t.Fatalf("fresh start reads anchor %v, want %v", fresh.Anchor(), want)
	}
}

// TestEtcdReplicaWatchDeliversOtherWritersVerifiedChanges: what one replica
// writes reaches another's watch as plaintext, and its reads, without a
// restart.
func TestEtcdReplicaWatchDeliversOtherWritersVerifiedChanges(t *testing.T) {
	c := etcdtest.Start(t, 1)
	rs := replicas(t, c, newPrefix(), storetest.NewHMACSealer(t), 2)
	ctx := t.Context()
	ch, err := rs[1].Watch(ctx, "gov/")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, rs[0], "gov/state", []byte("grants: none")); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, rs[0], "other/x", []byte("not watched")); err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, rs[0], "gov/state"); err != nil {
		t.Fatal(err)
	}
	var evs []store.Event
	timeout := time.After(30 * time.Second)
	for len(evs) < 2 {
		select {
		case ev := <-ch:
			if ev.Err != nil {
				t.Fatalf("watch ended: %v", ev.Err)
			}
			evs = append(evs, ev)
		case <-timeout:
			t.Fatalf("after 30s the watch delivered %d of 2 events", len(evs))
		}
	}
	if evs[0].Type != store.OpPut || evs[0].KV.Key != "gov/state" || string(evs[0].KV.Value) != "grants: none" || evs[1].Type != store.OpDelete {
		t.Fatalf("events %+v", evs)
	}
	if _, err := rs[1].Get(ctx, "gov/state"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get after the other replica deleted it: %v", err)
	}
}

// TestEtcdReplicaRefusesOlderRecordReplayedInEtcd: someone with write
// access to etcd but not the HSM puts back an older, validly sealed value
// of a record (a grant set before a revocation). A running replica must not
// read it, must not deliver it to watchers, and a fresh start must refuse
// the store.
func TestEtcdReplicaRefusesOlderRecordReplayedInEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	p := newPrefix()
	sealer := storetest.NewHMACSealer(t)
	rs := replicas(t, c, p, sealer, 2)
	ctx := t.Context()
	raw := openEtcd(t, c, p, nil)
	if err := store.Put(ctx, rs[0], "gov/state", []byte("grant: relay may decrypt")); err != nil {
		t.Fatal(err)
	}
	old, err := raw.Get(ctx, "gov/state")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, rs[0], "gov/state", []byte("grant revoked")); err != nil {
		t.Fatal(err)
	}
	if kv, err := rs[1].Get(ctx, "gov/state"); err != nil || string(kv.Value) != "grant revoked" {
		t.Fatalf("replica 1 reads %q, %v", kv.Value, err)
	}
	ch, err := rs[1].Watch(ctx, "gov/")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, raw, "gov/state", old.Value); err != nil {
		t.Fatal(err)
	}
	// The next transaction of a replica closes the replayed one.
	if err := store.Put(ctx, rs[0], "keys/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	for ev := range ch {
		if ev.Err == nil && ev.KV.Key == "gov/state" {
			t.Fatalf("the replayed record reached a watcher: %q", ev.KV.Value)
		}
		if ev.Err != nil && !errors.Is(ev.Err, store.ErrRolledBack) {
			t.Fatalf("watch ended with %v, want ErrRolledBack", ev.Err)
		}
	}
	for i, r := range rs {
		if kv, err := r.Get(ctx, "gov/state"); !errors.Is(err, store.ErrRolledBack) {
			t.Errorf("replica %d reads the replayed record: %q, %v; want ErrRolledBack", i, kv.Value, err)
		}
	}
	if _, err := store.Authenticated(ctx, openEtcd(t, c, p, nil), sealer, store.AuthOptions{}); !errors.Is(err, store.ErrRolledBack) {
		t.Fatalf("fresh start on the replayed store: %v, want ErrRolledBack", err)
	}
}

// TestEtcdReplicaRefusesDeletedRecordAndOlderAnchor: a record deleted in
// etcd reads as rolled back, not as absent; an older anchor put back makes
// every anchored write fail with ErrRolledBack while verified reads go on.
func TestEtcdReplicaRefusesDeletedRecordAndOlderAnchor(t *testing.T) {
	c := etcdtest.Start(t, 1)
	p := newPrefix()
	rs := replicas(t, c, p, storetest.NewHMACSealer(t), 2)
	ctx := t.Context()
	raw := openEtcd(t, c, p, nil)
	for _, k := range []string{"gov/a", "gov/b"} {
		if err := store.Put(ctx, rs[0], k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	oldAnchor, err := raw.Get(ctx, store.AnchorKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, rs[1], "gov/c", []byte("c")); err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, raw, "gov/a"); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		if _, err := r.Get(ctx, "gov/a"); !errors.Is(err, store.ErrRolledBack) {
			t.Errorf("replica %d: get of a record deleted in etcd: %v, want ErrRolledBack", i, err)
		}
		if _, err := r.List(ctx, "gov/", "", 0); !errors.Is(err, store.ErrRolledBack) {
			t.Errorf("replica %d: list over a record deleted in etcd: %v, want ErrRolledBack", i, err)
		}
	}
	if err := store.Put(ctx, raw, store.AnchorKey, oldAnchor.Value); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		if err := store.Put(ctx, r, "gov/d", []byte("d")); !errors.Is(err, store.ErrRolledBack) {
			t.Errorf("replica %d: write after the anchor was put back: %v, want ErrRolledBack", i, err)
		}
		if kv, err := r.Get(ctx, "gov/c"); err != nil || string(kv.Value) != "c" {
			t.Errorf("replica %d: verified read after the anchor was put back: %q, %v", i, kv.Value, err)
		}
	}
}
