package keys

import (
	"context"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/store"
)

// waitFor polls cond every 10ms for up to 30s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFollowingRegistrySeesAnotherWritersKeysWithoutRestart: two
// registries on one store and one token, as two replicas. What one creates,
// rotates, schedules for destruction or discards, the other serves (or
// stops serving) without a restart, and a change made through the second
// builds on the first's latest record rather than on its own older copy.
func TestFollowingRegistrySeesAnotherWritersKeysWithoutRestart(t *testing.T) {
	f := newRegFixture(t)
	a := f.open(t)
	b, err := OpenRegistry(context.Background(), a.st, f.tok, RegistryOptions{Now: func() time.Time { return f.now },
		Destroy: DestroyWindow{Min: time.Hour, Max: 24 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{}, 2)
	for _, r := range []*Registry{a, b} {
		go func() {
			defer func() { done <- struct{}{} }()
			r.Follow(ctx, func(err error) { t.Logf("follow: %v", err) })
		}()
	}
	defer func() { cancel(); <-done; <-done }()

	if _, err := a.Create(ctx, "mail", PurposeEncryptAES256GCM, "d"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other registry never saw the new key", func() bool { _, err := b.Get("mail"); return err == nil })
	if _, err := a.Rotate(ctx, "mail"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other registry never saw the rotation", func() bool {
		e, err := b.Get("mail")
		return err == nil && e.Key.Primary == 2
	})
	e, _ := b.Get("mail")
	if o, err := e.Object(2); err != nil || o.Purpose != PurposeEncryptAES256GCM {
		t.Fatalf("rotated version's object on the following registry: %+v, %v", o, err)
	}
	// b's change starts from a's rotation: a third version, not a second
	// one written over it.
	if _, err := b.Rotate(ctx, "mail"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first registry never saw the other's rotation", func() bool {
		e, err := a.Get("mail")
		return err == nil && e.Key.Primary == 3 && len(e.Key.Versions) == 3
	})
	if _, err := a.ScheduleDestroy(ctx, "mail", 1, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the destruction schedule never reached the other registry", func() bool {
		e, err := b.Get("mail")
		if err != nil {
			return false
		}
		v, _ := e.Key.Version(1)
		return v.State == StateDestroyScheduled
	})
	if _, err := a.Create(ctx, "tmp", PurposeMACHMACSHA256, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tmp never arrived", func() bool { _, err := b.Get("tmp"); return err == nil })
	if err := a.Discard(ctx, "tmp"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a discarded key is still served by the other registry", func() bool { _, err := b.Get("tmp"); return err != nil })
	if b.Len() != 1 {
		t.Fatalf("following registry holds %d keys, want 1", b.Len())
	}
}

// TestDestroyDueViaALeadershipThatEndedRecordsNothing: scheduled
// destruction committed through a leadership that has ended changes no
// record.
func TestDestroyDueViaALeadershipThatEndedRecordsNothing(t *testing.T) {
	f := newRegFixture(t)
	r := f.open(t)
	ctx := context.Background()
	if _, err := r.Create(ctx, "mail", PurposeEncryptAES256GCM, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Rotate(ctx, "mail"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ScheduleDestroy(ctx, "mail", 1, time.Hour); err != nil {
		t.Fatal(err)
	}
	f.now = f.now.Add(2 * time.Hour)
	el, ok := store.ElectorOf(r.st)
	if !ok {
		t.Fatal("no elector")
	}
	l, err := el.Campaign(ctx, "scheduler", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := r.DestroyDueVia(ctx, l); n != 0 || err == nil {
		t.Fatalf("destroy through an ended leadership: %d, %v", n, err)
	}
	e, _ := r.Get("mail")
	if v, _ := e.Key.Version(1); v.State != StateDestroyScheduled {
		t.Fatalf("version 1 is %v after a fenced-off destruction", v.State)
	}
	l2, err := el.Campaign(ctx, "scheduler", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.DestroyDueVia(ctx, l2); n != 1 || err != nil {
		t.Fatalf("destroy as leader: %d, %v", n, err)
	}
	if n, err := r.DestroyDueVia(ctx, l2); n != 0 || err != nil {
		t.Fatalf("second run: %d, %v; want nothing left to do", n, err)
	}
}
