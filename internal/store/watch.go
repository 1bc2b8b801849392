package store

import (
	"context"
	"strings"
	"sync"
)

// hub fans committed events out to watchers without ever blocking the
// publisher: each watcher has a bounded buffer, and one that fills is ended
// with ErrWatchLagged. Backends publish under their write lock, which is what
// makes delivery follow commit order.
type hub struct {
	mu       sync.Mutex
	watchers map[*watcher]struct{}
	closed   bool
}

// watcher is one Watch. Its channel has one slot more than its buffer so that
// the final error event always fits without blocking.
type watcher struct {
	prefix string
	stop   chan struct{} // closed when the watcher ends, releasing its ctx goroutine

	mu   sync.Mutex // serialises sends and the close of ch
	ch   chan Event
	done bool
}

func newHub() *hub { return &hub{watchers: make(map[*watcher]struct{})} }

// add registers a watcher for prefix that ends when ctx does.
func (h *hub) add(ctx context.Context, prefix string, buffer int) (<-chan Event, error) {
	w := &watcher{prefix: prefix, stop: make(chan struct{}), ch: make(chan Event, buffer+1)}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrClosed
	}
	h.watchers[w] = struct{}{}
	h.mu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
			h.remove(w)
			w.finish(nil)
		case <-w.stop:
		}
	}()
	return w.ch, nil
}

func (h *hub) remove(w *watcher) {
	h.mu.Lock()
	delete(h.watchers, w)
	h.mu.Unlock()
}

// publish delivers the events of one committed transaction.
func (h *hub) publish(events []Event) {
	if len(events) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.watchers {
		for _, ev := range events {
			if !strings.HasPrefix(ev.KV.Key, w.prefix) {
				continue
			}
			ev.KV.Value = cloneBytes(ev.KV.Value) // each watcher owns its copy
			if !w.send(ev) {
				delete(h.watchers, w)
				break
			}
		}
	}
}

// close ends every watcher with ErrClosed and refuses new ones.
func (h *hub) close() { h.closeWith(ErrClosed) }

// closeWith ends every watcher with err and refuses new ones.
func (h *hub) closeWith(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for w := range h.watchers {
		w.finish(err)
		delete(h.watchers, w)
	}
}

// endAll ends every current watcher with err; new ones are accepted.
func (h *hub) endAll(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.watchers {
		w.finish(err)
		delete(h.watchers, w)
	}
}

// wants reports whether some watcher's prefix covers key.
func (h *hub) wants(key string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.watchers {
		if strings.HasPrefix(key, w.prefix) {
			return true
		}
	}
	return false
}

// send queues ev without blocking. It reports false when the watcher has
// ended, including when this send found the buffer full and ended it.
func (w *watcher) send(ev Event) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return false
	}
	if len(w.ch) >= cap(w.ch)-1 {
		w.finishLocked(ErrWatchLagged)
		return false
	}
	w.ch <- ev
	return true
}

// finish ends the watcher once; a non-nil err is delivered as a final event.
func (w *watcher) finish(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.finishLocked(err)
}

func (w *watcher) finishLocked(err error) {
	if w.done {
		return
	}
	w.done = true
	if err != nil {
		w.ch <- Event{Err: err} // the reserved slot: never blocks
	}
	close(w.ch)
	close(w.stop)
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}
