package hsm

import (
	"context"
	"fmt"
	"time"
)

// Recycling: bounded memory on modules that leak session objects.
//
// Some PKCS#11 modules never free a session object, even after
// C_DestroyObject and after the session that made it is closed: SoftHSM
// 2.6.1 keeps ~260 bytes of each one until C_Finalize (SoftHSMv2 issues #562
// and #563). Custody still makes session objects where the data key must not
// leave the token (key transport to a recipient, data keys generated without
// plaintext, opening and rewrapping AES-KWP envelopes), so on such a module
// the process would grow for ever.
//
// With Config.RecycleAfterSessionObjects = N, the module recycles itself
// once N session objects were created since it was last initialised. A
// recycle is the recovery path run on purpose, on a healthy token:
//
//  1. new calls are held at a gate (they wait, bounded by their context);
//  2. the write lock is taken, which waits for every in-flight call to
//     finish (the drain);
//  3. C_Finalize (the module frees everything it held), C_Initialize and the
//     same login as recovery (initLocked), malloc_trim so that the C
//     allocator returns the freed pages (trim_cgo.go), then one scan
//     re-indexes the key handles before any call resumes;
//  4. the gate opens and the held calls run on fresh sessions.
//
// No call fails because of a recycle: calls wait instead. The pause (drain
// plus re-initialisation, typically a few to tens of milliseconds on SoftHSM)
// is reported as op "recycle" to Config.Observe and counted in Stats.Recycles.
// If the re-initialisation itself fails, the module goes through ordinary
// recovery (StateUnavailable, backoff) exactly as after a device error.

// sessionObjectCreated counts one session object made in the token and
// starts a recycle when the configured number is reached. It may be called
// while holding mu for reading (inside withSession): the recycle runs in its
// own goroutine and takes the write lock after the caller is done.
func (m *Module) sessionObjectCreated() {
	m.sessObjsTotal.Add(1)
	n := m.sessObjs.Add(1)
	if m.recycleAfter <= 0 || n < m.recycleAfter || m.State() != StateReady {
		return
	}
	if m.recycling.CompareAndSwap(false, true) {
		go m.recycle()
	}
}

// waitRecycle holds a new call while a recycle runs. It returns when the
// recycle is over, or with the context's error, or ErrUnavailable when the
// module is closed.
func (m *Module) waitRecycle(ctx context.Context) error {
	g := m.gate.Load()
	if g == nil {
		return nil
	}
	select {
	case <-*g:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the hsm module to recycle: %w", ctx.Err())
	case <-m.closed:
		return m.unavailable()
	}
}

// recycle re-initialises the module in a controlled way (see the top of this
// file). One runs at a time (m.recycling).
func (m *Module) recycle() {
	defer m.recycling.Store(false)
	if m.State() != StateReady || m.recovering.Load() {
		return // recovery re-initialises anyway
	}
	gate := make(chan struct{})
	m.gate.Store(&gate)
	t0 := time.Now()
	freed, indexed, gen, err := m.recycleLocked()
	pause := time.Since(t0)
	m.gate.Store(nil)
	close(gate)
	if m.observe != nil {
		m.observe("recycle", pause, err)
	}
	if err != nil {
		m.log.Error("hsm: recycling the module failed; recovering", "token", m.tokenName(), "err", err)
		m.deviceError(err, gen)
		return
	}
	m.recycles.Add(1)
	m.log.Info("hsm: module recycled to free session objects", "token", m.tokenName(),
		"session_objects", freed, "keys_indexed", indexed, "pause", pause)
}

// recycleLocked drains in-flight calls (by taking mu for writing), then
// re-initialises the library, logs in and re-indexes the key handles with
// the pinned session, all before any call resumes. It returns how many
// session objects were outstanding, how many handles were indexed and the
// generation that failed (for recovery) if it did.
func (m *Module) recycleLocked() (freed int64, indexed int, gen uint64, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	freed, gen = m.sessObjs.Load(), m.gen
	if err := m.reinitLocked(); err != nil {
		return freed, 0, gen, err
	}
	releaseFreedMemory()
	n, err := m.indexSession(m.p, m.pinned)
	if err != nil {
		// Not fatal: handles are found one by one on first use instead.
		m.log.Warn("hsm: re-indexing after a recycle failed; keys will be found one by one", "err", mapErr("index token", err))
	}
	return freed, n, m.gen, nil
}
