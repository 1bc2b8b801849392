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
