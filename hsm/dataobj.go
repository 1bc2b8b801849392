package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Data objects. custodyd keeps a little state on the token itself, where
// only a logged-in user (the PIN) can read or change it: the instance lease
// (internal/tokenlock) today. A data object is a private token CKO_DATA
// object with a label and CKA_APPLICATION "custody"; it holds no key
// material. Objects are found by label on every call (never cached: another
// process may change them; SoftHSM's file backend shows such changes on the
// next lookup) and told apart by their value.

// maxDataObjects bounds one lookup: a label names one or two objects.
const maxDataObjects = 64

// dataApplication is CKA_APPLICATION of custody's data objects.
const dataApplication = "custody"

func dataFindTemplate(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, dataApplication),
	}
}

type dataObject struct {
	h     pkcs11.ObjectHandle
	value []byte
}

func findData(p *pkcs11.Ctx, sh pkcs11.SessionHandle, label string) ([]dataObject, error) {
	hs, err := findObjects(p, sh, dataFindTemplate(label), maxDataObjects)
	if err != nil {
		return nil, err
	}
	out := make([]dataObject, 0, len(hs))
	for _, h := range hs {
		got, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return nil, err
		}
		out = append(out, dataObject{h: h, value: got[0].Value})
	}
	return out, nil
}

// DataObjects returns the values of the data objects labelled label.
func (m *Module) DataObjects(ctx context.Context, label string) ([][]byte, error) {
	if err := m.dataObjectsSupported(); err != nil {
		return nil, err
	}
	var out [][]byte
	err := m.withSession(ctx, "data-read", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		objs, err := findData(p, sh, label)
		for _, o := range objs {
			out = append(out, o.value)
		}
		return err
	})
	return out, mapErr("read data objects", err)
}

// CreateDataObject adds a data object labelled label holding value.
func (m *Module) CreateDataObject(ctx context.Context, label string, value []byte) error {
	if err := m.dataObjectsSupported(); err != nil {
		return err
	}
	err := m.withSession(ctx, "data-create", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		_, err := p.CreateObject(sh, dataCreateTemplate(label, value))
		return err
	})
	return mapErr("create data object", err)
}

// dataCreateTemplate: CKA_VALUE of a data object is read-only on SoftHSM
// even when the object is modifiable, so objects are never changed in
// place: ReplaceDataObject creates the new value and destroys the old.
func dataCreateTemplate(label string, value []byte) []*pkcs11.Attribute {
	return append(dataFindTemplate(label),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
	)
}

// ReplaceDataObject replaces the one data object labelled label whose
// current value satisfies match with one holding value (a new object is
// created, then the old one destroyed: a reader in between sees both). It
// reports false, changing nothing, when no object matches, and fails if more
// than one does.
func (m *Module) ReplaceDataObject(ctx context.Context, label string, match func(value []byte) bool, value []byte) (bool, error) {
	if err := m.dataObjectsSupported(); err != nil {
		return false, err
	}
	found := false
	err := m.withSession(ctx, "data-write", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		objs, err := findData(p, sh, label)
		if err != nil {
			return err
		}
		var target []dataObject
		for _, o := range objs {
			if match(o.value) {
				target = append(target, o)
			}
		}
		switch len(target) {
		case 0:
			return nil
		case 1:
		default:
			return fmt.Errorf("%w: %d data objects %q match", ErrExists, len(target), label)
		}
		found = true
		if _, err := p.CreateObject(sh, dataCreateTemplate(label, value)); err != nil {
			return err
		}
		return p.DestroyObject(sh, target[0].h)
	})
	return found, mapErr("write data object", err)
}

// DestroyDataObjects destroys the data objects labelled label whose value
// satisfies match and returns how many it destroyed.
func (m *Module) DestroyDataObjects(ctx context.Context, label string, match func(value []byte) bool) (int, error) {
	if err := m.dataObjectsSupported(); err != nil {
		return 0, err
	}
	n := 0
	err := m.withSession(ctx, "data-destroy", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		objs, err := findData(p, sh, label)
		if err != nil {
			return err
		}
		for _, o := range objs {
			if !match(o.value) {
				continue
			}
			if err := p.DestroyObject(sh, o.h); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, mapErr("destroy data objects", err)
}

// dataObjectsSupported refuses data-object calls on a module whose profile
// says it keeps none (NSS softokn).
func (m *Module) dataObjectsSupported() error {
	if m.profile != nil && m.profile.NoDataObjects {
		return fmt.Errorf("%w: %s keeps no private token data objects", ErrUnsupported, m.profile.Vendor)
	}
	return nil
}
