package client

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for TTL tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestCache(t *testing.T, size int, ttl time.Duration) (*keyCache, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	// A long TTL for the janitor's ticker: these tests drive expiry with
	// the fake clock and sweep.
	c := newKeyCache(size, ttl, clk.now)
	t.Cleanup(c.close)
	return c, clk
}

func keyOf(b byte) []byte { return bytes.Repeat([]byte{b}, DataKeySize) }

func idOf(s string) cacheID { return dataKeyID("k", map[string]string{"id": s}, []byte("wrapped")) }

// held returns the cache's own slice for id, to check later that it was
// zeroed in place.
func held(t *testing.T, c *keyCache, id cacheID) []byte {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byID[id]
	if !ok {
		t.Fatal("key not in cache")
	}
	return el.Value.(*cacheEntry).key
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return len(b) > 0
}

func TestCacheEvictsLeastRecentlyUsedKeyAndZeroesIt(t *testing.T) {
	c, _ := newTestCache(t, 2, time.Hour)
	a, b, d := idOf("a"), idOf("b"), idOf("d")
	c.put(a, keyOf(1))
	c.put(b, keyOf(2))
	bHeld := held(t, c, b)
	if got := c.get(a); !bytes.Equal(got, keyOf(1)) { // a is now most recent
		t.Fatalf("get(a) = %x", got)
	}
	c.put(d, keyOf(3))
	if c.len() != 2 {
		t.Fatalf("cache holds %d keys, bound is 2", c.len())
	}
	if got := c.get(b); got != nil {
		t.Fatal("least recently used key b survived eviction")
	}
	if !isZero(bHeld) {
		t.Fatalf("evicted key was not zeroed: %x", bHeld)
	}
	if c.get(a) == nil || c.get(d) == nil {
		t.Fatal("recently used keys were evicted")
	}
}

func TestCacheExpiresKeysAfterTTLAndZeroesThem(t *testing.T) {
	c, clk := newTestCache(t, 10, time.Minute)
	a, b := idOf("a"), idOf("b")
	c.put(a, keyOf(1))
	aHeld := held(t, c, a)
	clk.advance(30 * time.Second)
	c.put(b, keyOf(2))
	bHeld := held(t, c, b)
	if c.get(a) == nil {
		t.Fatal("key expired before its TTL")
	}
	clk.advance(31 * time.Second) // a is 61s old, b 31s
	if c.get(a) != nil {
		t.Fatal("key served after its TTL")
	}
	if !isZero(aHeld) {
		t.Fatalf("expired key was not zeroed on lookup: %x", aHeld)
	}
	clk.advance(30 * time.Second) // b expired; nobody asks for it
	c.sweep()
	if c.len() != 0 {
		t.Fatalf("sweep left %d expired keys", c.len())
	}
	if !isZero(bHeld) {
		t.Fatalf("expired key was not zeroed by sweep: %x", bHeld)
	}
}

func TestCacheJanitorZeroesExpiredKeysNobodyAsksFor(t *testing.T) {
	c := newKeyCache(10, 40*time.Millisecond, time.Now)
	defer c.close()
	id := idOf("a")
	c.put(id, keyOf(7))
	k := held(t, c, id)
	deadline := time.Now().Add(5 * time.Second)
	for c.len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c.len() != 0 {
		t.Fatal("janitor left an expired key in the cache")
	}
	if !isZero(k) {
		t.Fatalf("janitor dropped the key without zeroing it: %x", k)
	}
}

func TestCacheKeepsItsOwnCopies(t *testing.T) {
	c, _ := newTestCache(t, 10, time.Hour)
	id := idOf("a")
	mine := keyOf(5)
	c.put(id, mine)
	clear(mine) // the caller zeroes its key after use, as it should
	got := c.get(id)
	if !bytes.Equal(got, keyOf(5)) {
		t.Fatalf("cache shared the caller's slice: get = %x", got)
	}
	clear(got) // and zeroes what get returned
	if again := c.get(id); !bytes.Equal(again, keyOf(5)) {
		t.Fatalf("get returned the cache's own slice: now %x", again)
	}
}

func TestCacheReplacingAKeyZeroesTheOldCopy(t *testing.T) {
	c, _ := newTestCache(t, 10, time.Hour)
	id := idOf("a")
	c.put(id, keyOf(1))
	old := held(t, c, id)
	c.put(id, keyOf(2))
	if !isZero(old) {
		t.Fatalf("replaced key not zeroed: %x", old)
	}
	if c.len() != 1 || !bytes.Equal(c.get(id), keyOf(2)) {
		t.Fatal("replacement not stored once")
	}
}

func TestCacheCloseZeroesEveryKey(t *testing.T) {
	c, _ := newTestCache(t, 10, time.Hour)
	var heldKeys [][]byte
	for i, s := range []string{"a", "b", "c"} {
		c.put(idOf(s), keyOf(byte(i+1)))
		heldKeys = append(heldKeys, held(t, c, idOf(s)))
	}
	c.close()
	for i, k := range heldKeys {
		if !isZero(k) {
			t.Errorf("key %d not zeroed by close: %x", i, k)
		}
	}
	if c.len() != 0 {
		t.Fatalf("closed cache holds %d keys", c.len())
	}
	c.put(idOf("late"), keyOf(9))
	if c.get(idOf("late")) != nil {
		t.Fatal("closed cache accepted a key")
	}
	c.close() // idempotent
}

func TestDisabledCacheHoldsNothing(t *testing.T) {
	c := newKeyCache(-1, time.Hour, time.Now)
	defer c.close()
	c.put(idOf("a"), keyOf(1))
	if c.len() != 0 || c.get(idOf("a")) != nil {
		t.Fatal("disabled cache stored a key")
	}
}

func TestCacheIDSeparatesKeyNameContextAndWrappedKey(t *testing.T) {
	base := dataKeyID("k", map[string]string{"a": "b"}, []byte("w"))
	for name, id := range map[string]cacheID{
		"other key name":      dataKeyID("k2", map[string]string{"a": "b"}, []byte("w")),
		"other context value": dataKeyID("k", map[string]string{"a": "c"}, []byte("w")),
		"extra context entry": dataKeyID("k", map[string]string{"a": "b", "x": ""}, []byte("w")),
		"no context":          dataKeyID("k", nil, []byte("w")),
		"other wrapped key":   dataKeyID("k", map[string]string{"a": "b"}, []byte("w2")),
		"shifted boundary":    dataKeyID("k", map[string]string{"ab": ""}, []byte("w")),
	} {
		if id == base {
			t.Errorf("%s: same cache id as the base request", name)
		}
	}
	same := dataKeyID("k", map[string]string{"a": "b"}, []byte("w"))
	if same != base {
		t.Error("identical requests have different cache ids")
	}
}
