package hsm

import (
	"errors"
	"testing"

	"github.com/miekg/pkcs11"
)

// TestErrorMappingOfCodesOtherTokensUse: codes that are not SoftHSM's
// habits map to what they mean.
func TestErrorMappingOfCodesOtherTokensUse(t *testing.T) {
	for _, c := range []struct {
		code  uint
		want  error
		class class
	}{
		// A size query that lied (NSS through miekg/pkcs11): a module quirk,
		// not a refusal by policy, and the session is fine.
		{pkcs11.CKR_BUFFER_TOO_SMALL, ErrMechanism, classCaller},
		// NSS's codes for a bad GCM tag and a bad wrapped key.
		{pkcs11.CKR_ENCRYPTED_DATA_INVALID, ErrDecrypt, classCaller},
		{pkcs11.CKR_WRAPPED_KEY_INVALID, ErrDecrypt, classCaller},
		// NSS for a recipient modulus it cannot use.
		{pkcs11.CKR_KEY_SIZE_RANGE, ErrInvalidInput, classCaller},
		// SoftHSM's code for both a bad tag and a fault: a device error
		// unless the probe or the profile say otherwise and the session,
		// key and token are shown to work (callerFault).
		{pkcs11.CKR_GENERAL_ERROR, ErrUnavailable, classDevice},
	} {
		err := pkcs11.Error(c.code)
		if got := mapErr("op", err); !errors.Is(got, c.want) {
			t.Errorf("%v maps to %v, want %v", err, got, c.want)
		}
		if got := classify(err); got != c.class {
			t.Errorf("%v classified %d, want %d", err, got, c.class)
		}
		if errors.Is(mapErr("op", err), ErrPermission) {
			t.Errorf("%v maps to ErrPermission", err)
		}
	}
}

// TestProfilesNeverWaiveWhatCustodyRestsOn: no built-in profile may record
// sensitive, extractable, never-extractable, always-sensitive or token as
// "unverified" instead of refusing the key.
func TestProfilesNeverWaiveWhatCustodyRestsOn(t *testing.T) {
	for name, p := range Profiles {
		if p.Name != name {
			t.Errorf("profile %q is named %q", name, p.Name)
		}
		if err := p.validate(); err != nil {
			t.Error(err)
		}
		for _, w := range p.Waivers {
			if w.Why == "" {
				t.Errorf("%s waives %s without a reason", name, w.Attr)
			}
		}
	}
	bad := &Profile{Name: "bad", Waivers: []Waiver{{Attr: AttrExtractable, Why: "x"}}}
	if err := bad.validate(); err == nil {
		t.Error("a profile waiving extractable validated")
	}
}
