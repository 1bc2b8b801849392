package hsm

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"

	"github.com/custodyhq/custody/internal/secmem"
)

// Re-login design. A module must log in again after every re-initialisation
// (token loss and recovery, module recycling) without asking the officers
// each time, so it keeps the PIN — but never in plain form on the Go heap:
// pinVault holds it masked (XOR with a random pad of its own length) in one
// locked mapping outside the Go heap, excluded from core dumps, and unmasks
// it into a scratch area of that mapping only for the duration of one
// C_Login or C_SetPIN call, which reads it there (rawLib.login, setPIN):
// the PIN is never on the Go heap, on a goroutine stack or in C malloc
// memory (TestModuleKeepsNoCopyOfThePIN scans the process for it). The mask is not a defence against root reading
// the memory of the running process (pad and mask sit side by side, as they
// must for an unattended re-login); it keeps the PIN out of heap dumps,
// swap, core files and any accidental copy, and it is wiped by Close.
// docs/threat-model.md ("Sealed start") records the choice and the
// alternative (going back to sealed after every recovery).
type pinVault struct {
	mu  sync.Mutex
	buf *secmem.Buffer // pad | masked | scratch, n bytes each
	n   int
}

func newPINVault(pin []byte) (*pinVault, error) {
	v := &pinVault{}
	return v, v.replace(pin)
}

// replace keeps pin (copied; the caller still clears its own copy).
func (v *pinVault) replace(pin []byte) error {
	if len(pin) == 0 {
		return fmt.Errorf("%w: empty PIN", ErrLogin)
	}
	buf, err := secmem.New(3 * len(pin))
	if err != nil {
		return fmt.Errorf("%w: keep PIN: %w", ErrUnavailable, err)
	}
	b := buf.Bytes()
	n := len(pin)
	if _, err := rand.Read(b[:n]); err != nil {
		buf.Destroy()
		return fmt.Errorf("%w: keep PIN: %w", ErrUnavailable, err)
	}
	for i := range n {
		b[n+i] = pin[i] ^ b[i]
	}
	v.mu.Lock()
	old := v.buf
	v.buf, v.n = buf, n
	v.mu.Unlock()
	old.Destroy()
	return nil
}

// use unmasks the PIN into the scratch area, runs fn with a slice that
// aliases it, and zeroes the scratch area. fn must not keep or copy the
// slice: no string conversion (a copy on the Go heap, or on a goroutine
// stack that is freed unzeroed when it grows), no Go-side PKCS#11 wrapper
// that copies into C memory (rawLib.login and setPIN pass it in place).
func (v *pinVault) use(fn func(pin []byte) error) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.buf == nil || v.n == 0 {
		return fmt.Errorf("%w: no PIN kept", ErrLogin)
	}
	b := v.buf.Bytes()
	n := v.n
	scratch := b[2*n : 3*n]
	for i := range n {
		scratch[i] = b[i] ^ b[n+i]
	}
	defer clear(scratch)
	return fn(scratch)
}

func (v *pinVault) destroy() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.buf.Destroy()
	v.buf, v.n = nil, 0
}

// loginLocked logs the user in on session sh with the kept PIN. It is the
// only place this package calls C_Login: Open, recovery after the token
// went away and any re-initialisation (module recycling) all come here
// through initLocked. CKR_USER_ALREADY_LOGGED_IN is success (one login
// serves the process); a refused PIN is reported as ErrLogin by the caller
// and never retried. Caller holds mu for writing.
func (m *Module) loginLocked(sh pkcs11.SessionHandle) error {
	err := m.pin.use(func(pin []byte) error { return m.raw.login(sh, pkcs11.CKU_USER, pin) })
	if code, _ := rv(err); code == pkcs11.CKR_USER_ALREADY_LOGGED_IN {
		return nil
	}
	return err
}

// PINChange is a C_SetPIN that can still be undone: until Done or Revert,
// the module keeps the previous PIN too (masked, locked), so a caller whose
// next step fails (persisting the shares of the new PIN) can put the token
// back as it was.
type PINChange struct {
	m    *Module
	prev *pinVault
}

// ChangePIN replaces the token's user PIN with newPIN (C_SetPIN from the
// PIN this module logged in with) and keeps newPIN for later re-logins.
// newPIN is copied; the caller clears its own copy. On failure the token and
// the kept PIN are unchanged. The caller must call Done (keep the new PIN)
// or Revert (restore the old one) on the result.
func (m *Module) ChangePIN(ctx context.Context, newPIN []byte) (*PINChange, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(newPIN) == 0 {
		return nil, fmt.Errorf("%w: empty new PIN", ErrInvalidInput)
	}
	next, err := newPINVault(newPIN)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.State(); st == StateUnavailable || st == StateClosed || m.p == nil {
		next.destroy()
		return nil, m.unavailable()
	}
	if err := m.setPINLocked(m.pin, next); err != nil {
		next.destroy()
		return nil, err
	}
	prev := m.pin
	m.pin = next
	return &PINChange{m: m, prev: prev}, nil
}

// setPINLocked runs C_SetPIN from the PIN in from to the PIN in to, on the
// pinned session. Caller holds mu for writing.
func (m *Module) setPINLocked(from, to *pinVault) error {
	err := from.use(func(old []byte) error {
		return to.use(func(nw []byte) error { return m.raw.setPIN(m.pinned, old, nw) })
	})
	return mapErr("set pin", err)
}

// Done forgets the previous PIN: the change is final.
func (c *PINChange) Done() {
	if c == nil || c.prev == nil {
		return
	}
	c.prev.destroy()
	c.prev = nil
}

// Revert sets the token's PIN back to the previous one and keeps that for
// re-login. After Revert (successful or not) the change is settled.
func (c *PINChange) Revert(ctx context.Context) error {
	if c == nil || c.prev == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m := c.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.p == nil {
		return m.unavailable()
	}
	if err := m.setPINLocked(m.pin, c.prev); err != nil {
		return fmt.Errorf("revert pin change: %w", err)
	}
	cur := m.pin
	m.pin, c.prev = c.prev, nil
	cur.destroy()
	return nil
}

// PINLengths reports the shortest and longest user PIN the token accepts
// (CK_TOKEN_INFO ulMinPinLen/ulMaxPinLen).
func (m *Module) PINLengths(ctx context.Context) (minLen, maxLen int, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.p == nil {
		return 0, 0, m.unavailable()
	}
	ti, err := m.p.GetTokenInfo(m.slot)
	if err != nil {
		return 0, 0, mapErr("token info", err)
	}
	return int(ti.MinPinLen), int(ti.MaxPinLen), nil
}
