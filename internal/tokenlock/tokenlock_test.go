package tokenlock

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm/hsmtest"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Two Locks on one token stand for two custodyd processes: the lease lives
// on the token, and Alive says whether the other one is still running.
func TestSecondHolderIsRefusedUntilTheFirstReleases(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	alive := func(int, uint64) bool { return true }
	a, _ := New(m, Options{Now: c.now, Alive: alive, Listen: "10.0.0.1:8443"})
	b, _ := New(m, Options{Now: c.now, Alive: alive})
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	err := b.Acquire(ctx)
	if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "10.0.0.1:8443") {
		t.Fatalf("second holder: %v", err)
	}
	if vals, _ := m.DataObjects(ctx, Label); len(vals) != 1 {
		t.Fatalf("%d lease objects after a refused acquire", len(vals))
	}
	c.t = c.t.Add(10 * time.Second)
	if err := a.Renew(ctx); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Acquire(ctx); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestDeadHolderOnThisHostIsReplacedAtOnceAndElsewhereAfterExpiry(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	dead := false
	a, _ := New(m, Options{Now: c.now, TTL: 30 * time.Second})
	b, _ := New(m, Options{Now: c.now, TTL: 30 * time.Second, Alive: func(int, uint64) bool { return !dead }})
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Acquire(ctx); !errors.Is(err, ErrHeld) {
		t.Fatalf("holder alive: %v", err)
	}
	dead = true // a was SIGKILLed: same host, same boot, its pid is gone
	if err := b.Acquire(ctx); err != nil {
		t.Fatalf("holder dead: %v", err)
	}
	// a, were it only paused, finds out at its next renewal.
	if err := a.Renew(ctx); !errors.Is(err, ErrHeld) {
		t.Fatalf("displaced holder renews: %v", err)
	}
	// On another host the pid cannot be checked: the lease must expire.
	far, _ := New(m, Options{Now: c.now, TTL: 30 * time.Second})
	far.me.Host = "elsewhere"
	if err := far.Acquire(ctx); !errors.Is(err, ErrHeld) {
		t.Fatalf("other host, live lease: %v", err)
	}
	c.t = c.t.Add(31 * time.Second)
	if err := far.Acquire(ctx); err != nil {
		t.Fatalf("other host, expired lease: %v", err)
	}
	if err := b.Renew(ctx); !errors.Is(err, ErrHeld) {
		t.Fatalf("expired holder renews: %v", err)
	}
}

// TestSimultaneousAcquiresElectOne: both contenders write their lease
// before either reads back; the earlier acquisition wins and the later
// one withdraws.
func TestSimultaneousAcquiresElectOne(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	alive := func(int, uint64) bool { return true }
	a, _ := New(m, Options{Now: c.now, Alive: alive})
	b, _ := New(m, Options{Now: c.now, Alive: alive})
	// b's lease lands on the token between a's write and a's check, with
	// an earlier acquisition time (b's clock).
	early := b.me
	early.Acquired, early.Expires = c.t.Add(-time.Second), c.t.Add(time.Minute)
	raw, _ := json.Marshal(early)
	if err := m.CreateDataObject(ctx, Label, raw); err != nil {
		t.Fatal(err)
	}
	if err := a.Acquire(ctx); !errors.Is(err, ErrHeld) {
		t.Fatalf("later contender: %v", err)
	}
	vals, _ := m.DataObjects(ctx, Label)
	if len(vals) != 1 || holderOf(vals[0]) != b.me.Holder {
		t.Fatalf("after the election: %d leases", len(vals))
	}
}

func TestUnreadableLeaseRefusesRatherThanGuess(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	if err := m.CreateDataObject(ctx, Label, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	l, _ := New(m, Options{})
	if err := l.Acquire(ctx); !errors.Is(err, ErrHeld) {
		t.Fatalf("unreadable lease: %v", err)
	}
}

func TestProcessStartDistinguishesThisProcess(t *testing.T) {
	l, _ := New(nil, Options{})
	if l.me.Started == 0 || !processAlive(l.me.PID, l.me.Started) {
		t.Fatalf("this process is not alive by its own lease: %+v", l.me)
	}
	if processAlive(l.me.PID, l.me.Started+1) {
		t.Fatal("another start time of this pid counts as alive")
	}
	if processAlive(1<<30, 5) {
		t.Fatal("a pid that does not exist is alive")
	}
}

// Replicas naming the same store hold the token together; an instance of
// another store, or a lone one, is refused while they do, and a lone
// holder keeps replicas off.
func TestReplicasOfOneStoreShareTheLease(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	alive := func(int, uint64) bool { return true }
	lock := func(cluster string) *Lock {
		l, err := New(m, Options{Alive: alive, Cluster: cluster})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b := lock("etcd:1:/v/"), lock("etcd:1:/v/")
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Acquire(ctx); err != nil {
		t.Fatalf("second replica: %v", err)
	}
	if err := a.Renew(ctx); err != nil {
		t.Fatalf("renew beside a replica: %v", err)
	}
	for _, cluster := range []string{"etcd:2:/v/", "etcd:1:/other/", ""} {
		if err := lock(cluster).Acquire(ctx); !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "replica of etcd:1:/v/") {
			t.Fatalf("cluster %q beside replicas: %v", cluster, err)
		}
	}
	_ = a.Release(ctx)
	_ = b.Release(ctx)
	if err := lock("").Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lock("etcd:1:/v/").Acquire(ctx); !errors.Is(err, ErrHeld) {
		t.Fatalf("replica beside a lone instance: %v", err)
	}
}
