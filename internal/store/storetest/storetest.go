// Package storetest is the conformance suite every store.Store backend must
// pass, plus a software HMAC-SHA256 Sealer for tests. It is imported only by
// tests; the production Sealer is HSM-backed.
package storetest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/store"
)

// HMACSealer is a software store.Sealer: value || HMAC-SHA256(key, domain ||
// len(name) || name || value). Tests only.
type HMACSealer struct{ key []byte }

// errBadSeal is what HMACSealer.Open returns for any mismatch.
var errBadSeal = fmt.Errorf("storetest: bad seal: %w", store.ErrTampered)

const sealDomain = "custody-store-seal/v1"

// NewHMACSealer returns a sealer with a fresh random key.
func NewHMACSealer(t testing.TB) *HMACSealer {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return &HMACSealer{key: k}
}

func (s *HMACSealer) tag(name string, value []byte) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(sealDomain))
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(name)))
	m.Write(n[:])
	m.Write([]byte(name))
	m.Write(value)
	return m.Sum(nil)
}

// Seal implements store.Sealer.
func (s *HMACSealer) Seal(_ context.Context, name string, value []byte) ([]byte, error) {
	return append(append(make([]byte, 0, len(value)+sha256.Size), value...), s.tag(name, value)...), nil
}

// Open implements store.Sealer.
func (s *HMACSealer) Open(_ context.Context, name string, sealed []byte) ([]byte, error) {
	if len(sealed) < sha256.Size {
		return nil, errBadSeal
	}
	value, tag := sealed[:len(sealed)-sha256.Size], sealed[len(sealed)-sha256.Size:]
	if !hmac.Equal(tag, s.tag(name, value)) {
		return nil, errBadSeal
	}
	return append([]byte(nil), value...), nil
}

// Authenticated opens raw as an authenticated store (anchor checked) or
// fails the test.
func Authenticated(t testing.TB, raw store.Store, sealer store.Sealer) *store.AuthStore {
	t.Helper()
	s, err := store.Authenticated(context.Background(), raw, sealer, store.AuthOptions{
		Unanchored: func(k string) bool { return strings.HasPrefix(k, "dk/") },
	})
	if err != nil {
		t.Fatalf("open authenticated store: %v", err)
	}
	return s
}

// RunConformance runs the backend-independent store tests. newStore must
// return a fresh, empty store for each call; the suite closes it (Close must
// therefore be idempotent if newStore also registers a cleanup).
func RunConformance(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"GetMissingKeyReturnsNotFound", testGetMissing},
		{"PutThenGetReturnsValueAndRevision", testPutGet},
		{"ValuesAreCopiedInAndOut", testCopies},
		{"InvalidRequestsChangeNothing", testInvalid},
		{"ListHonoursPrefixBoundaries", testListPrefix},
		{"ListPagesVisitEveryKeyOnce", testListPaging},
		{"TxnAppliesAllOpsAtOneRevision", testTxnAtomic},
		{"TxnFailedConditionChangesNothing", testTxnConflict},
		{"TxnConditionsTable", testTxnConds},
		{"CreateExistingKeyFailsAndKeepsValue", testCreateExists},
		{"DeleteRemovesKeyAndMissingDeleteIsNoop", testDelete},
		{"WatchDeliversCommittedEventsInOrder", testWatchOrder},
		{"WatchSeesOnlyEventsAfterTheCall", testWatchAfterCall},
		{"WatchClosesWhenContextEnds", testWatchCtx},
		{"UnreadWatchDoesNotBlockWriters", testWatchNoBlock},
		{"ConcurrentUpdatesLoseNothing", testConcurrentUpdate},
		{"UpdateReturnsFnErrorAndChangesNothing", testUpdateFnError},
		{"CancelledContextIsHonoured", testCancelled},
		{"ClosedStoreRefusesAndEndsWatches", testClosed},
		{"AuthenticatedRoundTripsAndSealsAtRest", testAuthRoundTrip},
		{"AuthenticatedDetectsEditedValue", testAuthEdited},
		{"AuthenticatedDetectsValueMovedToAnotherKey", testAuthMoved},
		{"AuthenticatedValueConditionComparesPlaintext", testAuthValueCond},
		{"AuthenticatedWatchOpensAndDetects", testAuthWatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() { s.Close() })
			tc.fn(t, s)
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustPut(t *testing.T, s store.Store, key, value string) {
	t.Helper()
	if err := store.Put(ctxT(t), s, key, []byte(value)); err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
}

func mustGet(t *testing.T, s store.Store, key string) store.KV {
	t.Helper()
	kv, err := s.Get(ctxT(t), key)
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return kv
}

func mustRev(t *testing.T, s store.Store) int64 {
	t.Helper()
	r, err := s.Revision(ctxT(t))
	if err != nil {
		t.Fatalf("revision: %v", err)
	}
	return r
}

func keysOf(kvs []store.KV) []string {
	out := make([]string, len(kvs))
	for i, kv := range kvs {
		out[i] = kv.Key
	}
	return out
}

func eqStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// snapshot returns every key, value and revision, plus the store revision.
func snapshot(t *testing.T, s store.Store) string {
	t.Helper()
	kvs, err := s.List(ctxT(t), "", "", 0)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "rev=%d\n", mustRev(t, s))
	for _, kv := range kvs {
		fmt.Fprintf(&b, "%q=%q@%d\n", kv.Key, kv.Value, kv.Revision)
	}
	return b.String()
}

func testGetMissing(t *testing.T, s store.Store) {
	_, err := s.Get(ctxT(t), "nope")
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get missing: got %v, want ErrNotFound", err)
	}
	if r := mustRev(t, s); r != 0 {
		t.Fatalf("new store revision = %d, want 0", r)
	}
}

func testPutGet(t *testing.T, s store.Store) {
	mustPut(t, s, "a", "1")
	kv := mustGet(t, s, "a")
	if string(kv.Value) != "1" || kv.Key != "a" || kv.Revision != 1 {
		t.Fatalf("got %+v, want a=1@1", kv)
	}
	mustPut(t, s, "b", "2")
	mustPut(t, s, "a", "3")
	kv = mustGet(t, s, "a")
	if string(kv.Value) != "3" || kv.Revision != 3 {
		t.Fatalf("got %q@%d, want 3@3", kv.Value, kv.Revision)
	}
	if kv := mustGet(t, s, "b"); kv.Revision != 2 {
		t.Fatalf("b revision = %d, want 2 (untouched by later puts)", kv.Revision)
	}
	if r := mustRev(t, s); r != 3 {
		t.Fatalf("store revision = %d, want 3", r)
	}
	// An empty value is a value, not an absence.
	mustPut(t, s, "empty", "")
	if kv := mustGet(t, s, "empty"); len(kv.Value) != 0 {
		t.Fatalf("empty value came back as %q", kv.Value)
	}
}

func testCopies(t *testing.T, s store.Store) {
	in := []byte("original")
	if err := store.Put(ctxT(t), s, "k", in); err != nil {
		t.Fatal(err)
	}
	copy(in, "XXXXXXXX")
	kv := mustGet(t, s, "k")
	if string(kv.Value) != "original" {
		t.Fatalf("store kept caller's slice: %q", kv.Value)
	}
	kv.Value[0] = 'Y'
	kvs, err := s.List(ctxT(t), "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	kvs[0].Value[1] = 'Z'
	if kv := mustGet(t, s, "k"); string(kv.Value) != "original" {
		t.Fatalf("store handed out its own memory: %q", kv.Value)
	}
}

func testInvalid(t *testing.T, s store.Store) {
	mustPut(t, s, "keep", "v")
	before := snapshot(t, s)
	tooMany := make([]store.Op, store.MaxTxnOps+1)
	for i := range tooMany {
		tooMany[i] = store.PutOp("k"+strconv.Itoa(i), nil)
	}
	cases := []struct {
		name  string
		conds []store.Cond
		ops   []store.Op
	}{
		{"empty key", nil, []store.Op{store.PutOp("", []byte("x"))}},
		{"oversized key", nil, []store.Op{store.PutOp(string(make([]byte, store.MaxKeySize+1)), nil)}},
		{"oversized value", nil, []store.Op{store.PutOp("big", make([]byte, store.MaxValueSize+1))}},
		{"too many ops", nil, tooMany},
		{"key written twice", nil, []store.Op{store.PutOp("x", nil), store.DeleteOp("x")}},
		{"unknown op", nil, []store.Op{{Type: 99, Key: "x"}}},
		{"empty cond key", []store.Cond{store.Exists("")}, []store.Op{store.PutOp("x", nil)}},
		{"negative revision", []store.Cond{store.RevisionIs("keep", -1)}, []store.Op{store.PutOp("x", nil)}},
		{"unknown cond", []store.Cond{{Type: 99, Key: "keep"}}, []store.Op{store.PutOp("x", nil)}},
		{"valid put beside invalid", nil, []store.Op{store.PutOp("keep", []byte("changed")), store.PutOp("", nil)}},
	}
	for _, c := range cases {
		err := s.Txn(ctxT(t), c.conds, c.ops)
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", c.name, err)
		}
	}
	if _, err := s.Get(ctxT(t), ""); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("get empty key: got %v, want ErrInvalid", err)
	}
	if after := snapshot(t, s); after != before {
		t.Fatalf("invalid requests changed the store:\nbefore %s\nafter %s", before, after)
	}
}

func testListPrefix(t *testing.T, s store.Store) {
	// Neighbours of the prefix "a/" on both sides, including "a/" itself and
	// a key with a high byte that must still sort inside the prefix.
	for _, k := range []string{"a", "a.", "a/", "a/1", "a/2", "a/\xff", "a0", "b/1", "`"} {
		mustPut(t, s, k, "v-"+k)
	}
	cases := []struct {
		prefix, after string
		limit         int
		want          []string
	}{
		{"a/", "", 0, []string{"a/", "a/1", "a/2", "a/\xff"}},
		{"a/", "", 2, []string{"a/", "a/1"}},
		{"a/", "a/1", 0, []string{"a/2", "a/\xff"}},
		{"a/", "a/10", 0, []string{"a/2", "a/\xff"}}, // startAfter need not exist
		{"a/", "a", 0, []string{"a/", "a/1", "a/2", "a/\xff"}},
		{"a/", "a/\xff", 0, nil},
		{"a/", "b", 0, nil},
		{"a/", "", -1, []string{"a/", "a/1", "a/2", "a/\xff"}},
		{"b/", "", 0, []string{"b/1"}},
		{"c", "", 0, nil},
		{"", "", 0, []string{"`", "a", "a.", "a/", "a/1", "a/2", "a/\xff", "a0", "b/1"}},
		{"", "a0", 0, []string{"b/1"}},
		{"a/1", "", 0, []string{"a/1"}},
	}
	for _, c := range cases {
		kvs, err := s.List(ctxT(t), c.prefix, c.after, c.limit)
		if err != nil {
			t.Fatalf("list(%q, %q, %d): %v", c.prefix, c.after, c.limit, err)
		}
		if got := keysOf(kvs); !eqStrings(got, c.want) {
			t.Errorf("list(%q, %q, %d) = %q, want %q", c.prefix, c.after, c.limit, got, c.want)
		}
		for _, kv := range kvs {
			if string(kv.Value) != "v-"+kv.Key || kv.Revision == 0 {
				t.Errorf("list returned %q=%q@%d", kv.Key, kv.Value, kv.Revision)
			}
		}
	}
}

func testListPaging(t *testing.T, s store.Store) {
	const n = 53
	var want []string
	ops := make([]store.Op, 0, n)
	for i := range n {
		k := fmt.Sprintf("p/%03d", i)
		want = append(want, k)
		ops = append(ops, store.PutOp(k, []byte(k)))
	}
	if err := s.Txn(ctxT(t), nil, ops); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "q/000", "outside")
	for _, limit := range []int{1, 7, 10, 53, 100} {
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > n+1 {
				t.Fatalf("limit %d: paging does not terminate", limit)
			}
			kvs, err := s.List(ctxT(t), "p/", after, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(kvs) > limit {
				t.Fatalf("limit %d: page of %d", limit, len(kvs))
			}
			if len(kvs) == 0 {
				break
			}
			got = append(got, keysOf(kvs)...)
			after = kvs[len(kvs)-1].Key
		}
		if !eqStrings(got, want) {
			t.Fatalf("limit %d: paged keys = %q, want %q", limit, got, want)
		}
	}
}

func testTxnAtomic(t *testing.T, s store.Store) {
	mustPut(t, s, "gone", "x")
	err := s.Txn(ctxT(t), []store.Cond{store.Missing("a"), store.Exists("gone")},
		[]store.Op{store.PutOp("a", []byte("1")), store.PutOp("b", []byte("2")), store.DeleteOp("gone")})
	if err != nil {
		t.Fatal(err)
	}
	a, b := mustGet(t, s, "a"), mustGet(t, s, "b")
	if a.Revision != 2 || b.Revision != 2 || mustRev(t, s) != 2 {
		t.Fatalf("revisions a=%d b=%d store=%d, want all 2", a.Revision, b.Revision, mustRev(t, s))
	}
	if _, err := s.Get(ctxT(t), "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted key: %v", err)
	}
	// Conditions only, no ops: succeeds and does not advance the revision.
	if err := s.Txn(ctxT(t), []store.Cond{store.Exists("a")}, nil); err != nil {
		t.Fatal(err)
	}
	if r := mustRev(t, s); r != 2 {
		t.Fatalf("read-only txn advanced revision to %d", r)
	}
}

func testTxnConflict(t *testing.T, s store.Store) {
	mustPut(t, s, "k", "v1")
	stale := mustGet(t, s, "k").Revision
	mustPut(t, s, "k", "v2")
	before := snapshot(t, s)
	err := s.Txn(ctxT(t), []store.Cond{store.Exists("k"), store.RevisionIs("k", stale)},
		[]store.Op{store.PutOp("k", []byte("v3")), store.PutOp("other", []byte("x"))})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale CAS: got %v, want ErrConflict", err)
	}
	if after := snapshot(t, s); after != before {
		t.Fatalf("failed txn changed the store:\nbefore %s\nafter %s", before, after)
	}
	cur := mustGet(t, s, "k").Revision
	if err := s.Txn(ctxT(t), []store.Cond{store.RevisionIs("k", cur)}, []store.Op{store.PutOp("k", []byte("v3"))}); err != nil {
		t.Fatalf("fresh CAS: %v", err)
	}
	if kv := mustGet(t, s, "k"); string(kv.Value) != "v3" {
		t.Fatalf("after CAS k=%q", kv.Value)
	}
}

func testTxnConds(t *testing.T, s store.Store) {
	mustPut(t, s, "k", "val")
	rev := mustGet(t, s, "k").Revision
	cases := []struct {
		name string
		cond store.Cond
		hold bool
	}{
		{"missing on absent", store.Missing("absent"), true},
		{"missing on present", store.Missing("k"), false},
		{"exists on present", store.Exists("k"), true},
		{"exists on absent", store.Exists("absent"), false},
		{"revision equal", store.RevisionIs("k", rev), true},
		{"revision other", store.RevisionIs("k", rev+1), false},
		{"revision 0 on absent", store.RevisionIs("absent", 0), true},
		{"revision 0 on present", store.RevisionIs("k", 0), false},
		{"revision N on absent", store.RevisionIs("absent", rev), false},
		{"value equal", store.ValueIs("k", []byte("val")), true},
		{"value other", store.ValueIs("k", []byte("va")), false},
		{"value on absent", store.ValueIs("absent", nil), false},
	}
	for i, c := range cases {
		target := "t" + strconv.Itoa(i)
		err := s.Txn(ctxT(t), []store.Cond{c.cond}, []store.Op{store.PutOp(target, []byte("x"))})
		_, gerr := s.Get(ctxT(t), target)
		switch {
		case c.hold && (err != nil || gerr != nil):
			t.Errorf("%s: should hold; txn %v, get %v", c.name, err, gerr)
		case !c.hold && !errors.Is(err, store.ErrConflict):
			t.Errorf("%s: should fail with ErrConflict, got %v", c.name, err)
		case !c.hold && !errors.Is(gerr, store.ErrNotFound):
			t.Errorf("%s: failed txn still wrote (get: %v)", c.name, gerr)
		}
	}
}

func testCreateExists(t *testing.T, s store.Store) {
	if err := store.Create(ctxT(t), s, "k", []byte("first")); err != nil {
		t.Fatal(err)
	}
	rev := mustRev(t, s)
	err := store.Create(ctxT(t), s, "k", []byte("second"))
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("second create: got %v, want ErrExists", err)
	}
	if kv := mustGet(t, s, "k"); string(kv.Value) != "first" || mustRev(t, s) != rev {
		t.Fatalf("after failed create: %q, rev %d (was %d)", kv.Value, mustRev(t, s), rev)
	}
}

func testDelete(t *testing.T, s store.Store) {
	mustPut(t, s, "k", "v")
	if err := store.Delete(ctxT(t), s, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctxT(t), "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if r := mustRev(t, s); r != 2 {
		t.Fatalf("revision after delete = %d, want 2", r)
	}
	if err := store.Delete(ctxT(t), s, "k"); err != nil {
		t.Fatalf("delete missing: %v", err)
	}
	if r := mustRev(t, s); r != 2 {
		t.Fatalf("deleting a missing key advanced the revision to %d", r)
	}
	// A deleted key can be created again.
	if err := store.Create(ctxT(t), s, "k", []byte("again")); err != nil {
		t.Fatalf("re-create: %v", err)
	}
}

// collect reads n events or fails; error events fail the test.
func collect(t *testing.T, ch <-chan store.Event, n int) []store.Event {
	t.Helper()
	var out []store.Event
	timeout := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d of %d events", len(out), n)
			}
			if ev.Err != nil {
				t.Fatalf("watch error after %d events: %v", len(out), ev.Err)
			}
			out = append(out, ev)
		case <-timeout:
			t.Fatalf("timed out after %d of %d events", len(out), n)
		}
	}
	return out
}

// expectQuiet fails if ch delivers anything within a short while.
func expectQuiet(t *testing.T, ch <-chan store.Event) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		t.Fatalf("unexpected watch delivery %+v (open=%v)", ev, ok)
	case <-time.After(50 * time.Millisecond):
	}
}

func testWatchOrder(t *testing.T, s store.Store) {
	ch, err := s.Watch(ctxT(t), "w/")
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "w/a", "1")
	mustPut(t, s, "x/ignored", "1")
	if err := s.Txn(ctxT(t), nil, []store.Op{store.PutOp("w/b", []byte("2")), store.DeleteOp("w/a"), store.PutOp("wx", nil)}); err != nil {
		t.Fatal(err)
	}
	evs := collect(t, ch, 3)
	want := []struct {
		typ   store.OpType
		key   string
		value string
		rev   int64
	}{
		{store.OpPut, "w/a", "1", 1},
		{store.OpPut, "w/b", "2", 3},
		{store.OpDelete, "w/a", "", 3},
	}
	for i, w := range want {
		ev := evs[i]
		if ev.Type != w.typ || ev.KV.Key != w.key || string(ev.KV.Value) != w.value || ev.KV.Revision != w.rev {
			t.Errorf("event %d = %v %q=%q@%d, want %v %q=%q@%d", i, ev.Type, ev.KV.Key, ev.KV.Value, ev.KV.Revision, w.typ, w.key, w.value, w.rev)
		}
	}
	expectQuiet(t, ch)

	// Concurrent writers: the watcher sees every commit, revisions ascending.
	const writers, each = 4, 25
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				if err := store.Put(ctxT(t), s, fmt.Sprintf("w/%d/%d", g, i), nil); err != nil {
					t.Error(err)
				}
			}
		})
	}
	evs = collect(t, ch, writers*each)
	wg.Wait()
	last := int64(3)
	for _, ev := range evs {
		if ev.KV.Revision != last+1 {
			t.Fatalf("event revision %d after %d: not in commit order", ev.KV.Revision, last)
		}
		last = ev.KV.Revision
	}
}

func testWatchAfterCall(t *testing.T, s store.Store) {
	mustPut(t, s, "k", "before")
	ch, err := s.Watch(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "k", "after")
	ev := collect(t, ch, 1)[0]
	if string(ev.KV.Value) != "after" || ev.KV.Revision != 2 {
		t.Fatalf("first event %q@%d, want after@2", ev.KV.Value, ev.KV.Revision)
	}
}

func testWatchCtx(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(ctxT(t))
	ch, err := s.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("got event %+v after cancel, want closed channel", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch not closed after its context ended")
	}
	mustPut(t, s, "k", "v") // publishing to an ended watch must not panic or block
}

func testWatchNoBlock(t *testing.T, s store.Store) {
	ch, err := s.Watch(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	// Far more writes than any sane buffer would need to wait for; none may
	// wait on the watcher that nobody reads.
	done := make(chan error, 1)
	go func() {
		for i := range 300 {
			if err := store.Put(ctxT(t), s, "k", []byte(strconv.Itoa(i))); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("writers blocked behind an unread watcher")
	}
	// The watcher either has its events or was ended with ErrWatchLagged.
	var n int
	for ev := range ch {
		if ev.Err != nil {
			if !errors.Is(ev.Err, store.ErrWatchLagged) {
				t.Fatalf("watch ended with %v", ev.Err)
			}
			return
		}
		if ev.KV.Revision != int64(n+1) {
			t.Fatalf("event %d has revision %d", n, ev.KV.Revision)
		}
		if n++; n == 300 {
			return
		}
	}
	t.Fatalf("watch closed after %d events without an error", n)
}

func testConcurrentUpdate(t *testing.T, s store.Store) {
	const goroutines, each = 16, 20
	incr := func(old []byte) ([]byte, error) {
		n := 0
		if old != nil {
			var err error
			if n, err = strconv.Atoi(string(old)); err != nil {
				return nil, err
			}
		}
		return []byte(strconv.Itoa(n + 1)), nil
	}
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range each {
				if err := store.Update(ctxT(t), s, "counter", incr); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	kv := mustGet(t, s, "counter")
	if want := strconv.Itoa(goroutines * each); string(kv.Value) != want {
		t.Fatalf("counter = %s, want %s: updates were lost", kv.Value, want)
	}
	if r := mustRev(t, s); r != goroutines*each {
		t.Fatalf("revision = %d, want one per update (%d)", r, goroutines*each)
	}
}

func testUpdateFnError(t *testing.T, s store.Store) {
	mustPut(t, s, "k", "v")
	boom := errors.New("boom")
	err := store.Update(ctxT(t), s, "k", func(old []byte) ([]byte, error) {
		if string(old) != "v" {
			t.Errorf("fn saw %q, want v", old)
		}
		return nil, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want fn's error", err)
	}
	if kv := mustGet(t, s, "k"); string(kv.Value) != "v" || kv.Revision != 1 {
		t.Fatalf("fn error still changed the key: %q@%d", kv.Value, kv.Revision)
	}
	// Update of an absent key creates it, fn seeing nil.
	err = store.Update(ctxT(t), s, "new", func(old []byte) ([]byte, error) {
		if old != nil {
			t.Errorf("fn saw %q for an absent key", old)
		}
		return []byte("made"), nil
	})
	if err != nil || string(mustGet(t, s, "new").Value) != "made" {
		t.Fatalf("update of absent key: %v", err)
	}
}

func testCancelled(t *testing.T, s store.Store) {
	mustPut(t, s, "k", "v")
	ctx, cancel := context.WithCancel(ctxT(t))
	cancel()
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("get: %v", err)
	}
	if _, err := s.List(ctx, "", "", 0); !errors.Is(err, context.Canceled) {
		t.Errorf("list: %v", err)
	}
	if err := store.Put(ctx, s, "k", []byte("changed")); !errors.Is(err, context.Canceled) {
		t.Errorf("put: %v", err)
	}
	if _, err := s.Watch(ctx, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("watch: %v", err)
	}
	if kv := mustGet(t, s, "k"); string(kv.Value) != "v" {
		t.Fatalf("cancelled put wrote %q", kv.Value)
	}
}

func testClosed(t *testing.T, s store.Store) {
	mustPut(t, s, "k", "v")
	ch, err := s.Watch(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	var last store.Event
	for ev := range ch {
		last = ev
	}
	if !errors.Is(last.Err, store.ErrClosed) {
		t.Fatalf("watch ended with %v, want ErrClosed", last.Err)
	}
	ctx := ctxT(t)
	if _, err := s.Get(ctx, "k"); !errors.Is(err, store.ErrClosed) {
		t.Errorf("get: %v", err)
	}
	if _, err := s.List(ctx, "", "", 0); !errors.Is(err, store.ErrClosed) {
		t.Errorf("list: %v", err)
	}
	if err := store.Put(ctx, s, "k", nil); !errors.Is(err, store.ErrClosed) {
		t.Errorf("put: %v", err)
	}
	if _, err := s.Watch(ctx, ""); !errors.Is(err, store.ErrClosed) {
		t.Errorf("watch: %v", err)
	}
	if _, err := s.Revision(ctx); !errors.Is(err, store.ErrClosed) {
		t.Errorf("revision: %v", err)
	}
}

func testAuthRoundTrip(t *testing.T, raw store.Store) {
	s := Authenticated(t, raw, NewHMACSealer(t))
	if err := store.Create(ctxT(t), s, "keys/a", []byte("meta-a")); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "keys/b", "meta-b")
	if kv := mustGet(t, s, "keys/a"); string(kv.Value) != "meta-a" {
		t.Fatalf("authenticated get = %q", kv.Value)
	}
	kvs, err := s.List(ctxT(t), "keys/", "", 0)
	if err != nil || len(kvs) != 2 || string(kvs[1].Value) != "meta-b" {
		t.Fatalf("authenticated list = %v, %v", kvs, err)
	}
	if rawKV := mustGet(t, raw, "keys/a"); bytes.Equal(rawKV.Value, []byte("meta-a")) {
		t.Fatal("value stored unsealed")
	}
	if err := store.Update(ctxT(t), s, "keys/a", func(old []byte) ([]byte, error) {
		return append(old, "+1"...), nil
	}); err != nil {
		t.Fatal(err)
	}
	if kv := mustGet(t, s, "keys/a"); string(kv.Value) != "meta-a+1" {
		t.Fatalf("after update = %q", kv.Value)
	}
}

func testAuthEdited(t *testing.T, raw store.Store) {
	s := Authenticated(t, raw, NewHMACSealer(t))
	mustPut(t, s, "keys/a", "state=enabled")
	mustPut(t, s, "keys/b", "state=enabled")
	sealed := mustGet(t, raw, "keys/a").Value
	edited := bytes.Replace(sealed, []byte("enabled"), []byte("ENABLED"), 1)
	if err := store.Put(ctxT(t), raw, "keys/a", edited); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctxT(t), "keys/a"); !errors.Is(err, store.ErrTampered) {
		t.Fatalf("get of edited value: got %v, want ErrTampered", err)
	}
	if _, err := s.List(ctxT(t), "keys/", "", 0); !errors.Is(err, store.ErrTampered) {
		t.Fatalf("list over edited value: got %v, want ErrTampered", err)
	}
	if kv := mustGet(t, s, "keys/b"); string(kv.Value) != "state=enabled" {
		t.Fatalf("untouched neighbour: %q", kv.Value)
	}
	err := store.Update(ctxT(t), s, "keys/a", func(old []byte) ([]byte, error) { return old, nil })
	if !errors.Is(err, store.ErrTampered) {
		t.Fatalf("update over edited value: got %v, want ErrTampered", err)
	}
}

func testAuthMoved(t *testing.T, raw store.Store) {
	s := Authenticated(t, raw, NewHMACSealer(t))
	mustPut(t, s, "grants/alice", "decrypt")
	mustPut(t, s, "grants/mallory", "none")
	// Copy alice's valid sealed grant over mallory's.
	if err := store.Put(ctxT(t), raw, "grants/mallory", mustGet(t, raw, "grants/alice").Value); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctxT(t), "grants/mallory"); !errors.Is(err, store.ErrTampered) {
		t.Fatalf("get of moved value: got %v, want ErrTampered", err)
	}
	if kv := mustGet(t, s, "grants/alice"); string(kv.Value) != "decrypt" {
		t.Fatalf("source key: %q", kv.Value)
	}
}

func testAuthValueCond(t *testing.T, raw store.Store) {
	s := Authenticated(t, raw, NewHMACSealer(t))
	mustPut(t, s, "k", "v1")
	err := s.Txn(ctxT(t), []store.Cond{store.ValueIs("k", []byte("v1"))}, []store.Op{store.PutOp("k", []byte("v2"))})
	if err != nil {
		t.Fatalf("value condition on plaintext: %v", err)
	}
	err = s.Txn(ctxT(t), []store.Cond{store.ValueIs("k", []byte("v1"))}, []store.Op{store.PutOp("k", []byte("v3"))})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale value condition: got %v, want ErrConflict", err)
	}
	err = s.Txn(ctxT(t), []store.Cond{store.ValueIs("absent", nil)}, []store.Op{store.PutOp("k", []byte("v3"))})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("value condition on absent key: got %v, want ErrConflict", err)
	}
	if kv := mustGet(t, s, "k"); string(kv.Value) != "v2" {
		t.Fatalf("k = %q, want v2", kv.Value)
	}
}

func testAuthWatch(t *testing.T, raw store.Store) {
	s := Authenticated(t, raw, NewHMACSealer(t))
	ch, err := s.Watch(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "k", "plain")
	if err := store.Delete(ctxT(t), s, "k"); err != nil {
		t.Fatal(err)
	}
	evs := collect(t, ch, 2)
	if evs[0].Type != store.OpPut || string(evs[0].KV.Value) != "plain" || evs[1].Type != store.OpDelete {
		t.Fatalf("events %+v", evs)
	}
	if err := store.Put(ctxT(t), raw, "k", []byte("forged")); err != nil {
		t.Fatal(err)
	}
	var last store.Event
	for ev := range ch {
		last = ev
	}
	if !errors.Is(last.Err, store.ErrTampered) {
		t.Fatalf("watch ended with %+v, want ErrTampered", last)
	}
}

// RunElectorConformance runs the election tests every store.Elector must
// pass. newStore returns a fresh store; open returns another handle on the
// same store as a second process would see it, or nil when the backend
// admits one process only (bbolt), in which case contenders share one
// handle.
func RunElectorConformance(t *testing.T, newStore func(t *testing.T) store.Store, open func(t *testing.T, s store.Store) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, handles []store.Store)
	}{
		{"FirstCampaignLeadsAndIsNamed", testElectFirst},
		{"SecondCampaignWaitsForResign", testElectWaits},
		{"ResignedLeaderCannotWrite", testElectFenced},
		{"ContendersNeverLeadTogether", testElectNoOverlap},
		{"AuthenticatedLeadershipSealsValues", testElectAuth},
		{"ClosedStoreEndsLeadership", testElectClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() { s.Close() })
			handles := []store.Store{s}
			for range 2 {
				h := s
				if open != nil {
					h = open(t, s)
					t.Cleanup(func() { h.Close() })
				}
				handles = append(handles, h)
			}
			tc.fn(t, handles)
		})
	}
}

func elector(t *testing.T, s store.Store) store.Elector {
	t.Helper()
	e, ok := store.ElectorOf(s)
	if !ok {
		t.Fatalf("%T has no Elector", s)
	}
	return e
}

func campaign(t *testing.T, s store.Store, id string) store.Leadership {
	t.Helper()
	l, err := elector(t, s).Campaign(ctxT(t), "sched", id)
	if err != nil {
		t.Fatalf("campaign %s: %v", id, err)
	}
	return l
}

func testElectFirst(t *testing.T, hs []store.Store) {
	l := campaign(t, hs[0], "replica-a")
	if id, err := elector(t, hs[1]).Leader(ctxT(t), "sched"); err != nil || id != "replica-a" {
		t.Fatalf("leader seen by another handle = %q, %v; want replica-a", id, err)
	}
	if _, err := elector(t, hs[1]).Leader(ctxT(t), "other"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("leader of an election nobody ran: %v, want ErrNotFound", err)
	}
	if err := l.Txn(ctxT(t), nil, []store.Op{store.PutOp("sched/state", []byte("run 1"))}); err != nil {
		t.Fatalf("leader's fenced write: %v", err)
	}
	if kv := mustGet(t, hs[2], "sched/state"); string(kv.Value) != "run 1" {
		t.Fatalf("fenced write = %q", kv.Value)
	}
	if _, err := elector(t, hs[0]).Campaign(ctxT(t), "bad/name", "x"); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("campaign with a bad name: %v, want ErrInvalid", err)
	}
}

func testElectWaits(t *testing.T, hs []store.Store) {
	a := campaign(t, hs[0], "replica-a")
	won := make(chan store.Leadership, 1)
	go func() {
		l, err := elector(t, hs[1]).Campaign(ctxT(t), "sched", "replica-b")
		if err != nil {
			t.Error(err)
			close(won)
			return
		}
		won <- l
	}()
	select {
	case <-won:
		t.Fatal("second campaign won while the first leader holds")
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.Resign(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Done():
	default:
		t.Fatal("Done not closed after Resign")
	}
	select {
	case b, ok := <-won:
		if !ok {
			t.FailNow()
		}
		if id, err := elector(t, hs[2]).Leader(ctxT(t), "sched"); err != nil || id != "replica-b" {
			t.Fatalf("leader after hand-over = %q, %v", id, err)
		}
		_ = b.Resign(ctxT(t))
	case <-time.After(20 * time.Second):
		t.Fatal("second campaign did not win after the leader resigned")
	}
	// A campaign whose context ends while waiting returns the context error.
	c := campaign(t, hs[0], "replica-c")
	defer c.Resign(ctxT(t))
	ctx, cancel := context.WithTimeout(ctxT(t), 200*time.Millisecond)
	defer cancel()
	if _, err := elector(t, hs[1]).Campaign(ctx, "sched", "replica-d"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("campaign past its deadline: %v", err)
	}
}

func testElectFenced(t *testing.T, hs []store.Store) {
	a := campaign(t, hs[0], "replica-a")
	if err := a.Resign(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, hs[0])
	err := a.Txn(ctxT(t), nil, []store.Op{store.PutOp("sched/state", []byte("stale"))})
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("write after resign: %v, want ErrNotLeader", err)
	}
	if after := snapshot(t, hs[0]); after != before {
		t.Fatalf("deposed leader changed the store:\n%s\n%s", before, after)
	}
}

// testElectNoOverlap runs three contenders through several terms each. A
// leader claims a "holder" key that must be absent and gives it back
// before resigning, all with fenced writes: a second leader during a term
// would find the key taken (ErrConflict).
func testElectNoOverlap(t *testing.T, hs []store.Store) {
	const terms = 4
	var wg sync.WaitGroup
	for i, h := range hs {
		id := fmt.Sprintf("replica-%d", i)
		wg.Go(func() {
			for term := range terms {
				l, err := elector(t, h).Campaign(ctxT(t), "sched", id)
				if err != nil {
					t.Error(err)
					return
				}
				claim := l.Txn(ctxT(t), []store.Cond{store.Missing("sched/holder")},
					[]store.Op{store.PutOp("sched/holder", []byte(id)), store.PutOp("sched/log/"+id+"/"+strconv.Itoa(term), nil)})
				if claim != nil {
					t.Errorf("%s term %d: claim: %v (two leaders at once?)", id, term, claim)
				}
				time.Sleep(time.Millisecond)
				if err := l.Txn(ctxT(t), []store.Cond{store.ValueIs("sched/holder", []byte(id))}, []store.Op{store.DeleteOp("sched/holder")}); err != nil {
					t.Errorf("%s term %d: release: %v", id, term, err)
				}
				if err := l.Resign(ctxT(t)); err != nil {
					t.Errorf("%s: resign: %v", id, err)
				}
			}
		})
	}
	wg.Wait()
	kvs, err := hs[0].List(ctxT(t), "sched/log/", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != terms*len(hs) {
		t.Fatalf("%d terms recorded, want %d", len(kvs), terms*len(hs))
	}
}

func testElectAuth(t *testing.T, hs []store.Store) {
	sealer := NewHMACSealer(t)
	s := Authenticated(t, hs[0], sealer)
	l := campaign(t, s, "replica-a")
	defer l.Resign(ctxT(t))
	if err := l.Txn(ctxT(t), nil, []store.Op{store.PutOp("sched/state", []byte("sealed"))}); err != nil {
		t.Fatal(err)
	}
	if raw := mustGet(t, hs[0], "sched/state"); bytes.Equal(raw.Value, []byte("sealed")) {
		t.Fatal("leadership wrote an unsealed value through an authenticated store")
	}
	if kv := mustGet(t, Authenticated(t, hs[1], sealer), "sched/state"); string(kv.Value) != "sealed" {
		t.Fatalf("authenticated read = %q", kv.Value)
	}
	if err := l.Txn(ctxT(t), []store.Cond{store.ValueIs("sched/state", []byte("sealed"))}, []store.Op{store.PutOp("sched/state", []byte("next"))}); err != nil {
		t.Fatalf("value condition through a leadership compares plaintext: %v", err)
	}
}

func testElectClosed(t *testing.T, hs []store.Store) {
	l := campaign(t, hs[0], "replica-a")
	if err := hs[0].Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("leadership outlived its store")
	}
	if err := l.Txn(ctxT(t), nil, []store.Op{store.PutOp("k", nil)}); err == nil {
		t.Fatal("write through a closed store's leadership succeeded")
	}
}
