package hsm

import (
	"context"

	"github.com/miekg/pkcs11"
)

// Index enumerates the token's key objects once and caches their handles by
// CKA_ID and class, so that loading thousands of keys at start-up costs one
// scan of the token instead of one search per key (a SoftHSM search scans
// every object: loading n keys one by one is quadratic). An ID shared by
// two objects of one class is left out of the cache, so the usual lookup
// finds both and refuses to guess. It returns how many handles it cached.
func (m *Module) Index(ctx context.Context) (int, error) {
	n := 0
	err := m.withSession(ctx, "index", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		var err error
		n, err = m.indexSession(p, sh)
		return err
	})
	return n, mapErr("index token", err)
}

// indexSession is Index on a session the caller holds: a pooled one, or the
// pinned one under mu's write lock (recycle).
func (m *Module) indexSession(p *pkcs11.Ctx, sh pkcs11.SessionHandle) (int, error) {
	n := 0
	for _, class := range []uint{pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		}); err != nil {
			return 0, err
		}
		var all []pkcs11.ObjectHandle
		for {
			hs, _, err := p.FindObjects(sh, 1024)
			if err != nil {
				_ = p.FindObjectsFinal(sh)
				return 0, err
			}
			if len(hs) == 0 {
				break
			}
			all = append(all, hs...)
		}
		if err := p.FindObjectsFinal(sh); err != nil {
			return 0, err
		}
		byID := make(map[string][]pkcs11.ObjectHandle, len(all))
		for _, h := range all {
			got, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
			if err != nil || len(got[0].Value) == 0 {
				continue
			}
			byID[string(got[0].Value)] = append(byID[string(got[0].Value)], h)
		}
		for id, hs := range byID {
			if len(hs) == 1 {
				m.handles.Store(handleKey{id: id, class: class}, hs[0])
				n++
			}
		}
	}
	return n, nil
}
