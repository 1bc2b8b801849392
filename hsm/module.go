package hsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// Config selects a token and says how to log in to it.
type Config struct {
	// URI is an RFC 7512 PKCS#11 URI naming the module and the token.
	URI string
	// PIN is the user PIN. The module keeps a masked copy in locked memory
	// to log in again after recovery (login.go) and never prints it; the
	// caller clears its own copy.
	PIN []byte
	// MaxSessions bounds the sessions open at once (one per in-flight
	// operation). 0 means 32, capped by the token's own limit.
	MaxSessions int
	// Logger receives state changes. nil means slog.Default().
	Logger *slog.Logger
	// RecoveryBackoffMax caps the wait between recovery attempts (default 2s).
	RecoveryBackoffMax time.Duration
	// Observe, if set, is told the duration and outcome of every operation
	// on the token (op is a fixed name such as "decrypt"), for metrics.
	Observe func(op string, d time.Duration, err error)
	// InitArgs, if set, is passed to C_Initialize as pReserved: the
	// configuration string some modules need (NSS softokn's configdir,
	// the YubiHSM connector URL). It is not secret and may be logged.
	InitArgs string
	// Profile names the vendor profile (see Profiles); "" picks one from
	// the module's own manufacturer ID, or "generic".
	Profile string
	// DenyMechanisms are mechanisms Custody must not use on this token even
	// though it lists them (a firmware with a known defect, a site policy).
	// The probe treats them as absent: only the features needing them stop.
	DenyMechanisms []uint
	// RecycleAfterSessionObjects, if positive, makes the module recycle
	// itself after creating that many session objects since it was last
	// initialised: drain in-flight calls, C_Finalize, C_Initialize, log in
	// again and re-index the keys (recycle.go). It is for modules that never
	// free a destroyed session object (profile LeaksSessionObjects, SoftHSM
	// 2.6.1). 0: DefaultRecycleAfterSessionObjects on such a module, never
	// on others; negative: never.
	RecycleAfterSessionObjects int
}

// State is the module's health, for /readyz and metrics.
type State int32

// States of a Module.
const (
	StateReady       State = iota // logged in and serving
	StateDegraded                 // a device error was seen; probing
	StateUnavailable              // the token is gone or not logged in; calls fail fast
	StateClosed                   // Close was called
)

func (s State) String() string {
	switch s {
	case StateReady:
		return "ready"
	case StateDegraded:
		return "degraded"
	case StateUnavailable:
		return "unavailable"
	case StateClosed:
		return "closed"
	}
	return "unknown"
}

// Stats is a snapshot of the module's counters.
type Stats struct {
	State          State
	SessionsInUse  int
	SessionsOpen   int
	SessionsMax    int
	PoolWaits      uint64 // operations that had to wait for a free session
	SessionsClosed uint64 // sessions closed after a session or device error
	DeviceErrors   uint64
	Recoveries     uint64 // successful re-initialisations
	SessionObjects uint64 // session objects created (transient data keys, imported recipient keys)
	Recycles       uint64 // controlled re-initialisations (RecycleAfterSessionObjects)
	LastError      string // last device-class error code (never data)
}

// Module is a logged-in PKCS#11 token with a session pool. It is safe for
// concurrent use. Only one Module should use a given PKCS#11 library in a
// process at a time: C_Finalize (Close, recovery) ends every user of it.
type Module struct {
	uri        URI
	pin        *pinVault
	initArgs   *initArgs
	deny       []uint
	log        *slog.Logger
	max        int
	backoffMax time.Duration
	observe    func(op string, d time.Duration, err error)

	// mu is held for writing while the library is (re)initialised and for
	// reading by every operation, so C_Finalize never runs under one.
	mu      sync.RWMutex
	p       *pkcs11.Ctx
	slot    uint
	pinned  pkcs11.SessionHandle // keeps the login alive; used only under mu write lock
	gen     uint64               // bumped by every (re)initialisation
	mechs   atomic.Pointer[map[uint]bool]
	missing []string
	profile *Profile                     // fixed at Open
	raw     *rawLib                      // pre-sized calls into the same module
	caps    atomic.Pointer[Capabilities] // re-probed by every (re)initialisation

	sem    chan struct{} // one token per in-flight operation
	idleMu sync.Mutex
	idle   []pkcs11.SessionHandle
	open   atomic.Int64

	handles sync.Map // handleKey -> handleEntry

	pubMu sync.RWMutex
	pubs  map[string]any // cached public keys by CKA_ID

	state      atomic.Int32
	recovering atomic.Bool
	reindexing atomic.Bool
	closed     chan struct{}
	closeOnce  sync.Once

	waits, sessClosed, devErrs, recoveries atomic.Uint64
	lastErr                                atomic.Value // string

	// Recycling (recycle.go): sessObjs counts session objects created since
	// the last (re)initialisation; gate, while set, holds new calls back
	// (bounded by their context) during a recycle.
	recycleAfter  int64
	sessObjs      atomic.Int64
	sessObjsTotal atomic.Uint64
	recycles      atomic.Uint64
	recycling     atomic.Bool
	gate          atomic.Pointer[chan struct{}]
}

// Open loads the module, finds the token, logs in and probes mechanisms. A
// missing module, a missing token and a refused PIN each fail with one error
// naming the cause.
func Open(ctx context.Context, cfg Config) (*Module, error) {
	u, err := ParseURI(cfg.URI)
	if err != nil {
		return nil, err
	}
	if len(cfg.PIN) == 0 {
		return nil, fmt.Errorf("%w: no PIN given", ErrLogin)
	}
	if _, err := os.Stat(u.ModulePath); err != nil {
		return nil, fmt.Errorf("%w: pkcs11 module %q: %v", ErrUnavailable, u.ModulePath, errors.Unwrap(err))
	}
	var prof *Profile
	if cfg.Profile != "" {
		if prof, err = LookupProfile(cfg.Profile); err != nil {
			return nil, err
		}
		if err := prof.validate(); err != nil {
			return nil, err
		}
		if err := prof.checkPIN(cfg.PIN); err != nil {
			return nil, err
		}
	}
	pin, err := newPINVault(cfg.PIN)
	if err != nil {
		return nil, err
	}
	m := &Module{
		profile:    prof,
		uri:        u,
		pin:        pin,
		initArgs:   newInitArgs(cfg.InitArgs),
		deny:       append([]uint(nil), cfg.DenyMechanisms...),
		log:        cfg.Logger,
		max:        cfg.MaxSessions,
		backoffMax: cfg.RecoveryBackoffMax,
		observe:    cfg.Observe,
		closed:     make(chan struct{}),

		recycleAfter: int64(cfg.RecycleAfterSessionObjects),
		pubs:         map[string]any{},
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	if m.max <= 0 {
		m.max = 32
	}
	if m.backoffMax <= 0 {
		m.backoffMax = 2 * time.Second
	}
	if err := ctx.Err(); err != nil {
		pin.destroy()
		return nil, err
	}
	m.mu.Lock()
	err = m.initLocked()
	m.mu.Unlock()
	if err != nil {
		m.release()
		pin.destroy()
		return nil, err
	}
	m.sem = make(chan struct{}, m.max)
	switch {
	case m.recycleAfter < 0:
		m.recycleAfter = 0 // never
	case m.recycleAfter == 0 && m.profile.LeaksSessionObjects:
		m.recycleAfter = DefaultRecycleAfterSessionObjects
	}
	if m.recycleAfter > 0 {
		m.log.Info("hsm: the module will be recycled to free session objects", "after_session_objects", m.recycleAfter,
			"malloc_arenas_limited", LimitMallocArenas(MallocArenasWhenRecycling))
	}
	m.state.Store(int32(StateReady))
	if len(m.missing) > 0 {
		m.log.Warn("hsm: token lacks mechanisms", "token", u.Token, "missing", strings.Join(m.missing, ","))
	}
	m.logCaps()
	return m, nil
}

// RecycleAfter is how many session objects the module lets accumulate
// before it recycles itself; 0: never.
func (m *Module) RecycleAfter() int { return int(m.recycleAfter) }

// DefaultRecycleAfterSessionObjects is how many session objects a module
// whose profile leaks them (SoftHSM 2.6.1 keeps ~260 bytes of every
// destroyed session object until C_Finalize) may accumulate before it is
// recycled: about 5 MB. A recycle pauses calls for ~10 ms plus ~0.2 ms per
// key object on the token (measured with 1 and 1,000 keys).
const DefaultRecycleAfterSessionObjects = 20_000

// MallocArenasWhenRecycling caps glibc's malloc arenas on a module that is
// recycled (LimitMallocArenas): measured with make soak, the C side then
// stays flat instead of creeping ~4 MB over the first minutes.
const MallocArenasWhenRecycling = 2

// logCaps reports what the probe decided, and loudly what is missing.
func (m *Module) logCaps() {
	c := m.caps.Load()
	args := []any{"token", m.tokenName(), "profile", c.Profile}
	for _, cp := range c.List() {
		v := "missing"
		if cp.OK {
			v = strings.TrimSpace(cp.Mechanism.Name + " " + cp.Mode)
			if v == "" {
				v = "ok"
			}
			if !cp.Verified {
				v += " (unverified)"
			}
		}
		args = append(args, cp.Name, v)
	}
	m.log.Info("hsm: capabilities", args...)
	for _, cp := range c.List() {
		switch {
		case cp.OK:
		case cp.Name == CapExtractGate:
			m.log.Warn("hsm: the token does not enforce non-extractability; keys made on it are recorded as unverified", "detail", cp.Detail)
		default:
			m.log.Warn("hsm: capability missing; only the operations that need it are refused", "capability", cp.Name, "detail", cp.Detail)
		}
	}
}

// release frees what Open allocated outside the library (after a failed
// Open, or by Close).
func (m *Module) release() {
	if m.p != nil {
		m.p.Destroy()
		m.p = nil
	}
	m.raw.close()
	m.raw = nil
	m.initArgs.free()
}

// initLocked loads and initialises the library, finds the slot, opens the
// pinned session and logs in. Caller holds mu for writing.
func (m *Module) initLocked() error {
	if m.p == nil {
		p := pkcs11.New(m.uri.ModulePath)
		if p == nil {
			return fmt.Errorf("%w: cannot load pkcs11 module %q", ErrUnavailable, m.uri.ModulePath)
		}
		m.p = p
	}
	if err := m.p.Initialize(pkcs11.InitializeWithReserved(m.initArgs.ptr())); err != nil {
		if code, _ := rv(err); code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			return fmt.Errorf("%w: initialise pkcs11 module %q: %w", ErrUnavailable, m.uri.ModulePath, err)
		}
	}
	if m.raw == nil {
		raw, err := openRaw(m.uri.ModulePath)
		if err != nil {
			_ = m.p.Finalize()
			return err
		}
		m.raw = raw
	}
	if m.profile == nil {
		info, err := m.p.GetInfo()
		if err != nil {
			_ = m.p.Finalize()
			return mapErr("module info", err)
		}
		m.profile = detectProfile(info.ManufacturerID)
		if err := m.pin.use(m.profile.checkPIN); err != nil {
			_ = m.p.Finalize()
			return err
		}
	}
	slot, maxSess, err := m.findSlot()
	if err != nil {
		_ = m.p.Finalize()
		return err
	}
	m.slot = slot
	if cap := m.profile.MaxSessions; cap > 0 && (maxSess == 0 || uint(cap) < maxSess) {
		maxSess = uint(cap)
	}
	if maxSess > 0 && maxSess < uint(m.max)+1 {
		m.max = int(maxSess) - 1 // one stays pinned
		if m.max < 1 {
			m.max = 1
		}
	}
	sh, err := m.p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		_ = m.p.Finalize()
		return mapErr("open session", err)
	}
	if err := m.loginLocked(sh); err != nil {
		_ = m.p.CloseSession(sh)
		_ = m.p.Finalize()
		if errors.Is(mapErr("", err), ErrLogin) {
			return fmt.Errorf("%w: token %q refused the PIN (%v); not retried", ErrLogin, m.tokenName(), err)
		}
		return mapErr("login", err)
	}
	m.pinned = sh
	m.gen++
	m.handles.Clear()
	m.probeLocked()
	m.caps.Store(m.probeCapsLocked())
	return nil
}

func (m *Module) tokenName() string {
	switch {
	case m.uri.Token != "":
		return m.uri.Token
	case m.uri.Serial != "":
		return "serial " + m.uri.Serial
	}
	return fmt.Sprintf("slot-id %d", *m.uri.SlotID)
}

func (m *Module) findSlot() (uint, uint, error) {
	slots, err := m.p.GetSlotList(true)
	if err != nil {
		return 0, 0, mapErr("list slots", err)
	}
	for _, s := range slots {
		if m.uri.SlotID != nil && *m.uri.SlotID != s {
			continue
		}
		ti, err := m.p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		if m.uri.Token != "" && strings.TrimRight(ti.Label, " \x00") != m.uri.Token {
			continue
		}
		if m.uri.Serial != "" && strings.TrimRight(ti.SerialNumber, " \x00") != m.uri.Serial {
			continue
		}
		if m.uri.Manufacturer != "" && strings.TrimRight(ti.ManufacturerID, " \x00") != m.uri.Manufacturer {
			continue
		}
		if m.uri.Model != "" && strings.TrimRight(ti.Model, " \x00") != m.uri.Model {
			continue
		}
		maxSess := ti.MaxSessionCount
		if maxSess == pkcs11.CK_EFFECTIVELY_INFINITE || maxSess == pkcs11.CK_UNAVAILABLE_INFORMATION {
			maxSess = 0
		}
		return s, maxSess, nil
	}
	return 0, 0, fmt.Errorf("%w: token %s not found in module %q%s", ErrNotFound, m.tokenName(), m.uri.ModulePath,
		softHSMHint(m.uri.ModulePath, os.Getenv("SOFTHSM2_CONF")))
}

// softHSMHint says where SoftHSM looked for tokens: it reads its token
// directory from the file SOFTHSM2_CONF names, and a process started
// without it (a systemd unit, another shell) sees another directory.
func softHSMHint(modulePath, conf string) string {
	if !strings.Contains(strings.ToLower(filepath.Base(modulePath)), "softhsm") {
		return ""
	}
	if conf == "" {
		return "; SoftHSM finds its tokens through the config file named by SOFTHSM2_CONF, which is not set " +
			"(so it read /etc/softhsm/softhsm2.conf): set SOFTHSM2_CONF to the file whose directories.tokendir holds the token"
	}
	return fmt.Sprintf("; SoftHSM finds its tokens through SOFTHSM2_CONF=%s: check that its directories.tokendir holds the token", conf)
}

// Close closes every session and finalises the library. Calls after Close
// fail with ErrUnavailable.
func (m *Module) Close() error {
	var err error
	m.closeOnce.Do(func() {
		close(m.closed)
		m.state.Store(int32(StateClosed))
		m.mu.Lock()
		defer m.mu.Unlock()
		defer m.pin.destroy()
		if m.p == nil {
			return
		}
		m.dropIdle()
		_ = m.p.CloseAllSessions(m.slot)
		err = m.p.Finalize()
		if code, _ := rv(err); code == pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED {
			err = nil
		}
		m.release()
	})
	return err
}

// State returns the module's current state.
func (m *Module) State() State { return State(m.state.Load()) }

// Stats returns a snapshot of the counters.
func (m *Module) Stats() Stats {
	s := Stats{
		State:          m.State(),
		SessionsInUse:  len(m.sem),
		SessionsOpen:   int(m.open.Load()),
		SessionsMax:    m.max,
		PoolWaits:      m.waits.Load(),
		SessionsClosed: m.sessClosed.Load(),
		DeviceErrors:   m.devErrs.Load(),
		Recoveries:     m.recoveries.Load(),
		SessionObjects: m.sessObjsTotal.Load(),
		Recycles:       m.recycles.Load(),
	}
	if v, ok := m.lastErr.Load().(string); ok {
		s.LastError = v
	}
	return s
}

// Capabilities returns what the last (re)initialisation's probe decided.
func (m *Module) Capabilities() Capabilities {
	return *m.caps.Load()
}

// Profile returns the vendor profile in use.
func (m *Module) Profile() *Profile { return m.profile }

// Missing lists the mechanisms custody uses that the token lacks.
func (m *Module) Missing() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]string(nil), m.missing...)
}

func (m *Module) unavailable() error {
	if m.State() == StateClosed {
		return fmt.Errorf("%w: module closed", ErrUnavailable)
	}
	return fmt.Errorf("%w: token %s is not reachable; recovering", ErrUnavailable, m.tokenName())
}

// withSession runs fn with a session of its own. The session returns to the
// pool if fn succeeded or failed for a caller reason; it is closed if fn hit
// a session or device error, and a device error starts recovery.
func (m *Module) withSession(ctx context.Context, op string, fn func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if st := m.State(); st == StateUnavailable || st == StateClosed {
		return m.unavailable()
	}
	if err := m.waitRecycle(ctx); err != nil {
		return err
	}
	select {
	case m.sem <- struct{}{}:
	default:
		m.waits.Add(1)
		select {
		case m.sem <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("waiting for an hsm session: %w", ctx.Err())
		case <-m.closed:
			return m.unavailable()
		}
	}
	defer func() { <-m.sem }()

	m.mu.RLock()
	defer m.mu.RUnlock()
	if st := m.State(); st == StateUnavailable || st == StateClosed {
		return m.unavailable()
	}
	gen := m.gen
	sh, err := m.getSession()
	if err != nil {
		if classify(err) == classDevice {
			m.deviceError(err, gen)
			return m.unavailable()
		}
		return mapErr("open session", err)
	}
	t0 := time.Now()
	err = fn(m.p, sh)
	if m.observe != nil {
		m.observe(op, time.Since(t0), err)
	}
	if err != nil && staleHandle(err) {
		// A cached handle stopped working: either the key was deleted or the
		// token went away (SoftHSM says CKR_OBJECT_HANDLE_INVALID then).
		m.handles.Clear()
		if !m.tokenAlive() {
			err = fmt.Errorf("%w: %w", errTokenGone, err)
		} else {
			m.reindexAsync() // one scan refills the cache for every key
		}
	}
	switch {
	case err == nil:
		m.putSession(sh)
		return nil
	case classify(err) == classCaller:
		m.putSession(sh)
	case classify(err) == classSession:
		m.closeSession(sh)
	default:
		m.closeSession(sh)
		m.deviceError(err, gen)
		return fmt.Errorf("%w (%v)", m.unavailable(), err)
	}
	return err
}

// staleHandle reports whether err says an object handle is no longer valid.
func staleHandle(err error) bool {
	code, ok := rv(err)
	return ok && (code == pkcs11.CKR_OBJECT_HANDLE_INVALID || code == pkcs11.CKR_KEY_HANDLE_INVALID)
}

// tokenAlive is a quick liveness check usable under the read lock: the slot
// still reports our initialised token and (for SoftHSM) its directory exists.
func (m *Module) tokenAlive() bool {
	ti, err := m.p.GetTokenInfo(m.slot)
	if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
		return false
	}
	return m.tokenDirPresent()
}

func (m *Module) getSession() (pkcs11.SessionHandle, error) {
	m.idleMu.Lock()
	if n := len(m.idle); n > 0 {
		sh := m.idle[n-1]
		m.idle = m.idle[:n-1]
		m.idleMu.Unlock()
		return sh, nil
	}
	m.idleMu.Unlock()
	sh, err := m.p.OpenSession(m.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return 0, err
	}
	m.open.Add(1)
	return sh, nil
}

func (m *Module) putSession(sh pkcs11.SessionHandle) {
	m.idleMu.Lock()
	m.idle = append(m.idle, sh)
	m.idleMu.Unlock()
}

func (m *Module) closeSession(sh pkcs11.SessionHandle) {
	m.sessClosed.Add(1)
	m.open.Add(-1)
	_ = m.p.CloseSession(sh)
}

// dropIdle forgets idle sessions; caller holds mu for writing.
func (m *Module) dropIdle() {
	m.idleMu.Lock()
	for _, sh := range m.idle {
		_ = m.p.CloseSession(sh)
	}
	m.open.Add(-int64(len(m.idle)))
	m.idle = nil
	m.idleMu.Unlock()
}

// deviceError records a device-class failure seen by generation gen and
// starts recovery unless it is already running or a newer generation exists.
func (m *Module) deviceError(err error, gen uint64) {
	m.devErrs.Add(1)
	if code, ok := rv(err); ok {
		m.lastErr.Store(pkcs11.Error(code).Error())
	}
	if m.State() == StateClosed {
		return
	}
	if !m.recovering.CompareAndSwap(false, true) {
		return
	}
	m.state.CompareAndSwap(int32(StateReady), int32(StateDegraded))
	go m.recover(gen)
}

// recover checks whether the token is really gone and, if so, re-initialises
// the library with backoff until it is back. It runs in one goroutine at a time.
func (m *Module) recover(gen uint64) {
	defer m.recovering.Store(false)
	if m.probeHealthy(gen) {
		m.state.CompareAndSwap(int32(StateDegraded), int32(StateReady))
		return
	}
	m.state.Store(int32(StateUnavailable))
	m.log.Warn("hsm: token unreachable; re-initialising", "token", m.tokenName())
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		select {
		case <-m.closed:
			return
		default:
		}
		err := m.reinit()
		if err == nil {
			m.recoveries.Add(1)
			m.state.Store(int32(StateReady))
			// Handles died with the old library instance: find them all again
			// in one scan rather than one search per key on first use.
			m.reindexAsync()
			m.log.Info("hsm: token recovered", "token", m.tokenName(), "attempts", attempt)
			return
		}
		if errors.Is(err, ErrLogin) {
			// Never retry a refused PIN: it could lock the token.
			m.log.Error("hsm: login refused during recovery; not retrying", "token", m.tokenName())
			return
		}
		select {
		case <-m.closed:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, m.backoffMax)
	}
}

// probeHealthy reports whether generation gen still works: the slot still
// holds our token and the pinned session can still see token objects.
func (m *Module) probeHealthy(gen uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.p == nil || gen != m.gen {
		return m.p != nil
	}
	if _, err := m.p.GetSessionInfo(m.pinned); err != nil {
		return false
	}
	ti, err := m.p.GetTokenInfo(m.slot)
	if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
		return false
	}
	if m.uri.Token != "" && strings.TrimRight(ti.Label, " \x00") != m.uri.Token {
		return false
	}
	return m.tokenDirPresent()
}

func (m *Module) reinit() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reinitLocked()
}

// reinitLocked finalises and re-initialises the library and logs in again
// (initLocked). Caller holds mu for writing.
func (m *Module) reinitLocked() error {
	select {
	case <-m.closed: // Close won the race: never load the library again
		return fmt.Errorf("%w: module closed", ErrUnavailable)
	default:
	}
	if m.p != nil {
		m.dropIdle()
		_ = m.p.Finalize()
	}
	m.pubMu.Lock()
	clear(m.pubs)
	m.pubMu.Unlock()
	if err := m.initLocked(); err != nil {
		return err
	}
	m.sessObjs.Store(0) // C_Finalize freed every session object
	return nil
}

// reindexAsync runs Index in the background, once at a time, to refill the
// handle cache after it was emptied (recovery, a stale handle).
func (m *Module) reindexAsync() {
	if !m.reindexing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer m.reindexing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, err := m.Index(ctx); err != nil {
			m.log.Warn("hsm: re-indexing the token failed; keys will be found one by one", "err", err)
		}
	}()
}
