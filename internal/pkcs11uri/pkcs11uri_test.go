package pkcs11uri

import (
	"errors"
	"testing"
)

func TestParseAcceptsWhatBothUsersWrite(t *testing.T) {
	for _, s := range []string{
		"pkcs11:token=custody?module-path=/usr/lib/softhsm/libsofthsm2.so",
		"pkcs11:token=custody;module-path=/lib.so",
		"pkcs11:serial=1a2b?module-path=/lib.so",
		"pkcs11:slot-id=3?module-path=/lib.so",
		"pkcs11:token=carol-card;object=carol;type=private?module-path=/lib.so",
		"pkcs11:token=a%20b;id=%01%02?module-path=/lib.so&module-name=softhsm",
	} {
		u, err := Parse(s)
		if err != nil {
			t.Errorf("Parse(%q) = %v", s, err)
			continue
		}
		back, err := Parse(u.String())
		if err != nil || back.String() != u.String() {
			t.Errorf("round trip of %q: %q, %v", s, u.String(), err)
		}
	}
	u, _ := Parse("pkcs11:token=a%20b;id=%01%02?module-path=/lib.so")
	if u.Token != "a b" || string(u.ID) != "\x01\x02" {
		t.Fatalf("percent-decoding: %+v", u)
	}
}

func TestParseRefusesWhatCouldMisleadOrLeak(t *testing.T) {
	for name, s := range map[string]string{
		"pin-value":          "pkcs11:token=t?module-path=/l.so&pin-value=1234",
		"pin-source":         "pkcs11:token=t;pin-source=file:/etc/pin?module-path=/l.so",
		"repeated attribute": "pkcs11:token=t;token=u?module-path=/l.so",
		"token and serial":   "pkcs11:token=t;serial=1?module-path=/l.so",
		"no token":           "pkcs11:object=k?module-path=/l.so",
		"no module":          "pkcs11:token=t",
		"unknown attribute":  "pkcs11:tokn=t?module-path=/l.so",
		"no scheme":          "token=t?module-path=/l.so",
		"bad slot":           "pkcs11:slot-id=x?module-path=/l.so",
		"bad escape":         "pkcs11:token=%zz?module-path=/l.so",
		"no value":           "pkcs11:token?module-path=/l.so",
	} {
		if _, err := Parse(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Parse(%q) = %v, want ErrInvalid", name, s, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("pkcs11:token=custody?module-path=/usr/lib/softhsm/libsofthsm2.so")
	f.Add("pkcs11:token=a;object=b;id=%01?module-path=/x&pin-value=1")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Parse(s)
		if err != nil {
			return
		}
		if back, err := Parse(u.String()); err != nil || back.String() != u.String() {
			t.Fatalf("%q parsed but its rendering %q does not round-trip: %v", s, u.String(), err)
		}
	})
}
