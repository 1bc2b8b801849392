package hsm_test

import (
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// TestKeysCannotLeaveTheToken attacks every kind of key with raw PKCS#11:
// reading secret parts, wrapping it out, and flipping it to extractable or
// non-sensitive. Each attempt must be refused by the token. NSS softokn
// refuses all but the wrap-out (see wrapOutRefused).
func TestKeysCannotLeaveTheToken(t *testing.T) {
	hsmtest.ForEach(t, testKeysCannotLeaveTheToken)
}

// extractionRefused says whether a token refuses C_WrapKey of a key with
// CKA_EXTRACTABLE=false and C_CopyObject of it to an extractable copy. NSS
// softokn 3.87 refuses neither, in FIPS mode or not (measured): its probe
// must say so, custodyd refuses to hold master keys on it outside dev mode,
// and its keys record "extractable_enforced" as unverified.
var extractionRefused = map[hsmtest.Kind]bool{hsmtest.SoftHSM: true, hsmtest.NSS: false}

func testKeysCannotLeaveTheToken(t *testing.T, tok *hsmtest.Token) {
	m := tok.Open(t)
	ctx := ctxT(t)
	wrapper, _, err := m.CreateKey(ctx, hsm.KindAES256, "wrapper")
	if err != nil {
		t.Fatal(err)
	}
	caps := m.Capabilities()
	if caps.Extract.OK != extractionRefused[tok.Kind] {
		t.Fatalf("probe says extraction refused = %v (%s), want %v", caps.Extract.OK, caps.Extract.Detail, extractionRefused[tok.Kind])
	}
	wrapMech := caps.Wrap.Mechanism.Code
	for _, kind := range kindsOn(tok) {
		k, _, err := m.CreateKey(ctx, kind, "victim-"+kind.String())
		if err != nil {
			t.Fatal(err)
		}
		secretAttrs := map[hsm.Kind][]uint{
			hsm.KindAES256:     {pkcs11.CKA_VALUE},
			hsm.KindHMACSHA256: {pkcs11.CKA_VALUE},
			hsm.KindECDSAP256:  {pkcs11.CKA_VALUE},
			hsm.KindECDSAP384:  {pkcs11.CKA_VALUE},
			hsm.KindEd25519:    {pkcs11.CKA_VALUE},
			hsm.KindAuditP256:  {pkcs11.CKA_VALUE},
			hsm.KindRSA3072PSS: {pkcs11.CKA_PRIVATE_EXPONENT, pkcs11.CKA_PRIME_1, pkcs11.CKA_PRIME_2, pkcs11.CKA_EXPONENT_1, pkcs11.CKA_EXPONENT_2, pkcs11.CKA_COEFFICIENT},
		}[kind]
		attack := func(p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
			for _, a := range secretAttrs {
				_, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(a, nil)})
				if !isCode(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
					t.Errorf("%s: reading attribute 0x%x: %v, want CKR_ATTRIBUTE_SENSITIVE", kind, a, err)
				}
			}
			for _, flip := range []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
				pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			} {
				if err := p.SetAttributeValue(sh, h, []*pkcs11.Attribute{flip}); err == nil {
					t.Errorf("%s: setting attribute 0x%x succeeded", kind, flip.Type)
				}
			}
			// Copying to a new object must not produce an extractable copy.
			if c, err := p.CopyObject(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}); err == nil {
				_ = p.DestroyObject(sh, c)
				if extractionRefused[tok.Kind] {
					t.Errorf("%s: extractable copy created", kind)
				}
			}
			return nil
		}
		if err := hsm.RawToken(ctx, m, k, attack); err != nil {
			t.Fatal(err)
		}
		// Wrapping it out under another key in custody is refused.
		err = hsm.Raw(ctx, m, wrapper, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle, wh pkcs11.ObjectHandle) error {
			return hsm.Raw(ctx, m, k, func(p *pkcs11.Ctx, sh2 pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
				_, err := p.WrapKey(sh2, []*pkcs11.Mechanism{pkcs11.NewMechanism(wrapMech, nil)}, wh, h)
				if extractionRefused[tok.Kind] && !isCode(err, pkcs11.CKR_KEY_UNEXTRACTABLE) {
					t.Errorf("%s: C_WrapKey: %v, want CKR_KEY_UNEXTRACTABLE", kind, err)
				}
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestCopyToSessionObjectIsRefused: custody keys are not modifiable, so
// not even a session-object copy (which would keep the value in memory
// outside the token's object store) can be made of them.
func TestCopyToSessionObjectIsRefused(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	k, _, _ := m.CreateKey(ctx, hsm.KindAES256, "k")
	err := hsm.Raw(ctx, m, k, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) error {
		c, err := p.CopyObject(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)})
		if err == nil {
			_ = p.DestroyObject(sh, c)
			t.Error("session copy of a custody key was created")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func isCode(err error, code uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == code
}
