package hsm

import (
	"context"

	"github.com/miekg/pkcs11"
)

// Raw runs fn with a pooled session and k's main object handle, so tests can
// attack a key with raw PKCS#11 calls.
func Raw(ctx context.Context, m *Module, k Key, fn func(p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error) error {
	return m.withSession(ctx, "test", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.handle(p, sh, k, mainClass(k.Kind))
		if err != nil {
			return err
		}
		return fn(p, sh, h)
	})
}

// CountSessionObjects counts the session (non-token) objects visible to a
// session; transient data keys and imported recipient keys must not leak.
func CountSessionObjects(ctx context.Context, m *Module) (int, error) {
	n := 0
	err := m.withSession(ctx, "test", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		hs, err := findObjects(p, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}, 10000)
		n = len(hs)
		return err
	})
	return n, err
}

// RawToken is Raw on the token object itself, never a hot copy.
func RawToken(ctx context.Context, m *Module, k Key, fn func(p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error) error {
	return m.withSession(ctx, "test", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.tokenHandle(p, sh, k, mainClass(k.Kind))
		if err != nil {
			return err
		}
		return fn(p, sh, h)
	})
}

// FinalizeBehindItsBack calls C_Finalize on the module's library as another
// user of the library in the process could: every session and handle dies.
func FinalizeBehindItsBack(m *Module) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.p.Finalize()
}

// FunctionListMatchesSymbols checks the pre-sized calls' view of the
// module's function list against the symbols it exports, entry by entry.
func FunctionListMatchesSymbols(m *Module) []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var bad []string
	for i, name := range functionListNames {
		if !m.raw.fnMatchesSymbol(i, name) {
			bad = append(bad, name)
		}
	}
	return bad
}

// RFC5649Wrap exposes the Go reference the probe compares tokens with.
var RFC5649Wrap = rfc5649Wrap

// GCM IV decisions, for the table test of vendor behaviours.
const (
	GCMRefused      = int(gcmRefused)
	GCMCallerIV     = int(gcmCallerIV)
	GCMTokenIV      = int(gcmTokenIV)
	GCMRetryTokenIV = int(gcmRetryTokenIV)
)

// DecideGCM exposes decideGCM.
func DecideGCM(ptLen int, sent, ct, back []byte, err error) (int, []byte, string) {
	m, iv, why := decideGCM(ptLen, sent, ct, back, err)
	return int(m), iv, why
}

// HoldCalls sets the recycle gate as a recycle does, so that new calls wait,
// and returns the function that opens it again.
func HoldCalls(m *Module) (release func()) {
	g := make(chan struct{})
	m.gate.Store(&g)
	return func() {
		m.gate.Store(nil)
		close(g)
	}
}
