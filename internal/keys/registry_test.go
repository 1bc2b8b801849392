package keys

// The registry's own logic, against an in-memory token and a real bbolt
// file: no cgo, no HSM (CGO_ENABLED=0 go test ./internal/keys runs these).
// The HSM-backed token is tested in package hsmtoken and end to end.

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/custody"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/store/storetest"
)

// memToken is an in-memory Token: objects by label, with custody attributes.
type memToken struct {
	mu      sync.Mutex
	objects map[string]Object
	failNew error
	n       int
}

func newMemToken() *memToken { return &memToken{objects: map[string]Object{}} }

func (m *memToken) Create(_ context.Context, p Purpose, label string) ([]byte, Attrs, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failNew != nil {
		return nil, Attrs{}, m.failNew
	}
	if _, dup := m.objects[label]; dup {
		return nil, Attrs{}, fmt.Errorf("label %q exists", label)
	}
	m.n++
	id := []byte{0xab, byte(m.n)}
	m.objects[label] = Object{ID: id, Label: label, Purpose: p}
	return id, Attrs{custody.Attrs{Token: true, Private: true, NeverExtractable: true, AlwaysSensitive: true, Local: true, Sensitive: true}}, nil
}

func (m *memToken) Find(_ context.Context, o Object) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if got, ok := m.objects[o.Label]; !ok || string(got.ID) != string(o.ID) {
		return ErrObjectMissing
	}
	return nil
}

func (m *memToken) Destroy(_ context.Context, o Object) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objects, o.Label)
	return nil
}

func (m *memToken) Index(context.Context) error { return nil }

func (m *memToken) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.objects)
}

type regFixture struct {
	path   string
	sealer *storetest.HMACSealer
	tok    *memToken
	now    time.Time
}

func newRegFixture(t *testing.T) *regFixture {
	return &regFixture{path: filepath.Join(t.TempDir(), "store.db"), sealer: storetest.NewHMACSealer(t), tok: newMemToken(),
		now: time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)}
}

func (f *regFixture) open(t *testing.T) *Registry {
	t.Helper()
	raw, err := store.OpenBolt(f.path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	st := storetest.Authenticated(t, raw, f.sealer)
	r, err := OpenRegistry(context.Background(), st, f.tok, RegistryOptions{Now: func() time.Time { return f.now },
		Destroy: DestroyWindow{Min: time.Hour, Max: 24 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	return r
}

func (f *regFixture) reopen(t *testing.T, r *Registry) *Registry {
	t.Helper()
	r.st.Close()
	return f.open(t)
}

func TestRegistryCreateRotateAndReloadFindEveryObject(t *testing.T) {
	f := newRegFixture(t)
	r := f.open(t)
	ctx := context.Background()
	if _, err := r.Create(ctx, "mail", PurposeEncryptAES256GCM, "d"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create(ctx, "mail", PurposeEncryptAES256GCM, "d"); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second create: %v", err)
	}
	if _, err := r.Rotate(ctx, "mail"); err != nil {
		t.Fatal(err)
	}
	r = f.reopen(t, r)
	e, err := r.Get("mail")
	if err != nil || e.Key.Primary != 2 {
		t.Fatalf("after reload: %+v %v", e, err)
	}
	for _, v := range []uint32{1, 2} {
		if o, err := e.Object(v); err != nil || o.Purpose != PurposeEncryptAES256GCM {
			t.Fatalf("version %d object: %+v %v", v, o, err)
		}
	}
}

func TestRegistryFailsClosedOnAMissingObjectAndLoadsTheRest(t *testing.T) {
	f := newRegFixture(t)
	r := f.open(t)
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := r.Create(ctx, n, PurposeMACHMACSHA256, ""); err != nil {
			t.Fatal(err)
		}
	}
	e, _ := r.Get("a")
	o, _ := e.Object(1)
	_ = f.tok.Destroy(ctx, o) // deleted behind the registry's back
	r = f.reopen(t, r)
	ea, err := r.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ea.Object(1); !errors.Is(err, ErrKeyMaterialMissing) {
		t.Fatalf("missing object: %v, want ErrKeyMaterialMissing", err)
	}
	eb, _ := r.Get("b")
	if _, err := eb.Object(1); err != nil {
		t.Fatalf("the other key: %v", err)
	}
}

func TestRegistryLeavesNothingOnTheTokenWhenCreateFails(t *testing.T) {
	f := newRegFixture(t)
	r := f.open(t)
	f.tok.failNew = errors.New("CKR_DEVICE_MEMORY")
	if _, err := r.Create(context.Background(), "x", PurposeEncryptAES256GCM, ""); err == nil {
		t.Fatal("create succeeded with a failing token")
	}
	if _, err := r.Get("x"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("half-made key: %v", err)
	}
	if _, err := r.Create(context.Background(), "bad name", PurposeEncryptAES256GCM, ""); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("bad name: %v", err)
	}
	if f.tok.count() != 0 {
		t.Fatalf("%d objects left on the token", f.tok.count())
	}
}

func TestRegistryDiscardAndScheduledDestructionRemoveObjects(t *testing.T) {
	f := newRegFixture(t)
	r := f.open(t)
	ctx := context.Background()
	for _, n := range []string{"gone", "kept"} {
		if _, err := r.Create(ctx, n, PurposeEncryptAES256GCM, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Rotate(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if err := r.Discard(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get("gone"); !errors.Is(err, ErrKeyNotFound) || f.tok.count() != 2 {
		t.Fatalf("after discard: %v, %d objects", err, f.tok.count())
	}
	if _, err := r.ScheduleDestroy(ctx, "kept", 1, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.DestroyDue(ctx); n != 0 {
		t.Fatalf("destroyed %d before the wait", n)
	}
	f.now = f.now.Add(3 * time.Hour)
	if n, err := r.DestroyDue(ctx); n != 1 || err != nil {
		t.Fatalf("DestroyDue = %d, %v", n, err)
	}
	e, _ := r.Get("kept")
	if _, err := e.Object(1); !errors.Is(err, ErrKeyMaterialMissing) || f.tok.count() != 1 {
		t.Fatalf("destroyed version: %v, %d objects", err, f.tok.count())
	}
	if v, _ := e.Key.Version(1); v.State != StateDestroyed {
		t.Fatalf("version 1 is %v", v.State)
	}
	r = f.reopen(t, r)
	if _, err := r.Get("gone"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("discarded key back after reload: %v", err)
	}
}

// dueForDestruction is a registry whose key "k" has two versions, the first
// scheduled for destruction and past its wait.
func dueForDestruction(t *testing.T) (*regFixture, *Registry) {
	t.Helper()
	f := newRegFixture(t)
	r := f.open(t)
	ctx := context.Background()
	if _, err := r.Create(ctx, "k", PurposeEncryptAES256GCM, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Rotate(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ScheduleDestroy(ctx, "k", 1, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	f.now = f.now.Add(3 * time.Hour)
	return f, r
}

// TestAScheduledDestructionIsNeverMadeOffTheRecord: the intent is recorded
// before the HSM object is deleted, the outcome after; when the intent
// cannot be recorded, nothing is deleted and the version stays scheduled,
// to be destroyed (on the record) at a later run.
func TestAScheduledDestructionIsNeverMadeOffTheRecord(t *testing.T) {
	f, r := dueForDestruction(t)
	ctx := context.Background()
	var got []string
	auditDown := errors.New("audit log unavailable")
	r.opts.Record = func(_ context.Context, ev DestroyEvent) error {
		got = append(got, fmt.Sprintf("%s v%d intent=%t err=%v objects=%d", ev.Key, ev.Version, ev.Intent, ev.Err, f.tok.count()))
		if ev.Intent {
			return auditDown
		}
		return nil
	}
	if n, err := r.DestroyDue(ctx); n != 0 || !errors.Is(err, auditDown) {
		t.Fatalf("DestroyDue with the record down = %d, %v", n, err)
	}
	e, _ := r.Get("k")
	if v, _ := e.Key.Version(1); v.State != StateDestroyScheduled || f.tok.count() != 2 {
		t.Fatalf("with the record down: version 1 %v, %d objects", v.State, f.tok.count())
	}
	got = nil
	r.opts.Record = func(_ context.Context, ev DestroyEvent) error {
		got = append(got, fmt.Sprintf("%s v%d intent=%t err=%v objects=%d", ev.Key, ev.Version, ev.Intent, ev.Err, f.tok.count()))
		return nil
	}
	if n, err := r.DestroyDue(ctx); n != 1 || err != nil {
		t.Fatalf("DestroyDue = %d, %v", n, err)
	}
	want := "k v1 intent=true err=<nil> objects=2; k v1 intent=false err=<nil> objects=1"
	if s := strings.Join(got, "; "); s != want {
		t.Fatalf("records %q, want %q", s, want)
	}
}

// failingCommitter refuses every transaction, as a deposed leader's fenced
// writes or a full store disk do.
type failingCommitter struct{}

func (failingCommitter) Txn(context.Context, []store.Cond, []store.Op) error {
	return errors.New("store write refused")
}

// TestADestructionWhoseStoreWriteFailsSaysTheObjectIsGone: when the HSM
// object was deleted but recording the version destroyed failed, the
// outcome says so (not "failed" as if nothing happened), and the next run
// records it destroyed.
func TestADestructionWhoseStoreWriteFailsSaysTheObjectIsGone(t *testing.T) {
	f, r := dueForDestruction(t)
	ctx := context.Background()
	var evs []DestroyEvent
	r.opts.Record = func(_ context.Context, ev DestroyEvent) error { evs = append(evs, ev); return nil }
	if n, err := r.DestroyDueVia(ctx, failingCommitter{}); n != 0 || err == nil {
		t.Fatalf("DestroyDueVia with the store refusing = %d, %v", n, err)
	}
	if len(evs) != 2 || !evs[0].Intent || evs[1].Err == nil || !evs[1].ObjectDeleted || f.tok.count() != 1 {
		t.Fatalf("events %+v with %d objects left; want an intent, then an error saying the object is gone", evs, f.tok.count())
	}
	evs = nil
	if n, err := r.DestroyDue(ctx); n != 1 || err != nil {
		t.Fatalf("the next run: %d, %v", n, err)
	}
	if len(evs) != 2 || evs[1].Err != nil || evs[1].ObjectDeleted {
		t.Fatalf("the next run's events %+v", evs)
	}
}
