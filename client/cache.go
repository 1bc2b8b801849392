package client

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"sort"
	"sync"
	"time"
)

// keyCache is a bounded cache of unwrapped data keys, so that a relay that
// opens many messages of one conversation asks custodyd to unwrap its data
// key once, not per message. Entries are identified by a digest of (key
// name, encryption context, wrapped key), so a hit is exactly the key
// custodyd would have returned for that request.
//
// Invariants: the cache holds its own copies of keys, never a caller's slice;
// get returns a fresh copy that the caller zeroes; every key that leaves the
// cache (evicted, expired, replaced, closed) is zeroed before it is dropped.
type keyCache struct {
	mu      sync.Mutex
	max     int
	ttl     time.Duration
	now     func() time.Time
	lru     *list.List // front = most recently used; values are *cacheEntry
	byID    map[cacheID]*list.Element
	closed  bool
	stop    chan struct{}
	stopped chan struct{}
}

type cacheID [sha256.Size]byte

type cacheEntry struct {
	id      cacheID
	key     []byte
	expires time.Time
}

// newKeyCache returns a cache of at most size keys, each kept for ttl. A
// janitor goroutine zeroes expired keys even when nobody asks for them; it
// runs until close. size <= 0 returns a disabled cache.
func newKeyCache(size int, ttl time.Duration, now func() time.Time) *keyCache {
	c := &keyCache{max: size, ttl: ttl, now: now, lru: list.New(), byID: make(map[cacheID]*list.Element)}
	if size > 0 && ttl > 0 {
		c.stop = make(chan struct{})
		c.stopped = make(chan struct{})
		go c.janitor(max(ttl/4, 10*time.Millisecond))
	}
	return c
}

func (c *keyCache) janitor(every time.Duration) {
	defer close(c.stopped)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.sweep()
		}
	}
}

// dataKeyID identifies an unwrap request: key name, encryption context
// (canonically ordered) and wrapped key, each length-prefixed.
func dataKeyID(keyName string, encCtx map[string]string, wrapped []byte) cacheID {
	h := sha256.New()
	h.Write([]byte("custody client data key cache v1\x00"))
	writeField := func(b []byte) {
		h.Write(binary.AppendUvarint(nil, uint64(len(b))))
		h.Write(b)
	}
	writeField([]byte(keyName))
	writeField(canonicalContext(encCtx))
	writeField(wrapped)
	var id cacheID
	h.Sum(id[:0])
	return id
}

// canonicalContext encodes an encryption context unambiguously: entries in
// key order, each key and value length-prefixed.
func canonicalContext(encCtx map[string]string) []byte {
	keys := make([]string, 0, len(encCtx))
	for k := range encCtx {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := binary.AppendUvarint(nil, uint64(len(keys)))
	for _, k := range keys {
		out = binary.AppendUvarint(out, uint64(len(k)))
		out = append(out, k...)
		out = binary.AppendUvarint(out, uint64(len(encCtx[k])))
		out = append(out, encCtx[k]...)
	}
	return out
}

// get returns a copy of the key for id, or nil. The caller zeroes the copy.
func (c *keyCache) get(id cacheID) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byID[id]
	if !ok {
		return nil
	}
	e := el.Value.(*cacheEntry)
	if !c.now().Before(e.expires) {
		c.removeLocked(el)
		return nil
	}
	c.lru.MoveToFront(el)
	return append([]byte(nil), e.key...)
}

// put stores a copy of key under id, evicting (and zeroing) the least
// recently used keys beyond the bound. It does nothing on a disabled or
// closed cache.
func (c *keyCache) put(id cacheID, key []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.max <= 0 {
		return
	}
	if el, ok := c.byID[id]; ok {
		c.removeLocked(el)
	}
	e := &cacheEntry{id: id, key: append([]byte(nil), key...), expires: c.now().Add(c.ttl)}
	c.byID[id] = c.lru.PushFront(e)
	for c.lru.Len() > c.max {
		c.removeLocked(c.lru.Back())
	}
}

// sweep zeroes and drops every expired key.
func (c *keyCache) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for el := c.lru.Back(); el != nil; {
		prev := el.Prev()
		if !now.Before(el.Value.(*cacheEntry).expires) {
			c.removeLocked(el)
		}
		el = prev
	}
}

// len returns the number of keys held.
func (c *keyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// close zeroes every key, stops the janitor and disables the cache.
func (c *keyCache) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	for c.lru.Len() > 0 {
		c.removeLocked(c.lru.Back())
	}
	c.mu.Unlock()
	if c.stop != nil {
		close(c.stop)
		<-c.stopped
	}
}

func (c *keyCache) removeLocked(el *list.Element) {
	e := el.Value.(*cacheEntry)
	clear(e.key)
	c.lru.Remove(el)
	delete(c.byID, e.id)
}

// isClosed reports whether close was called.
func (c *keyCache) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}
