package hsm_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/custodyhq/custody/hsm"
)

func TestParseURI(t *testing.T) {
	good := []struct {
		in   string
		want hsm.URI
	}{
		{"pkcs11:token=custody?module-path=/usr/lib/softhsm/libsofthsm2.so", hsm.URI{Token: "custody", ModulePath: "/usr/lib/softhsm/libsofthsm2.so"}},
		{"pkcs11:token=my%20vault?module-path=/x.so", hsm.URI{Token: "my vault", ModulePath: "/x.so"}},
		{"pkcs11:token=a;module-path=/x.so", hsm.URI{Token: "a", ModulePath: "/x.so"}},
		{"pkcs11:serial=9;manufacturer=SoftHSM%20project;model=SoftHSM%20v2?module-path=/x.so", hsm.URI{Serial: "9", Manufacturer: "SoftHSM project", Model: "SoftHSM v2", ModulePath: "/x.so"}},
	}
	for _, c := range good {
		got, err := hsm.ParseURI(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		again, err := hsm.ParseURI(got.String())
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("round trip of %q via %q: %+v %v", c.in, got.String(), again, err)
		}
	}
	bad := []string{
		"",
		"token=x?module-path=/x.so",
		"pkcs11:token=x",            // no module
		"pkcs11:?module-path=/x.so", // no token selector
		"pkcs11:token=x;tokn=y?module-path=/x.so", // typo
		"pkcs11:token=x?module-path=/x.so&pin-value=1234",
		"pkcs11:token=%zz?module-path=/x.so",
		"pkcs11:slot-id=abc?module-path=/x.so",
		"pkcs11:token?module-path=/x.so",
		"pkcs11:token=x;serial=y?module-path=/x.so", // two selectors: exactly one names the token
		"pkcs11:token=x;pin-source=file:/p?module-path=/x.so",
		"pkcs11:token=x;token=y?module-path=/x.so",
	}
	for _, in := range bad {
		if _, err := hsm.ParseURI(in); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Errorf("ParseURI(%q) = %v, want ErrInvalidInput", in, err)
		}
	}
}

func FuzzParseURI(f *testing.F) {
	f.Add("pkcs11:token=custody?module-path=/usr/lib/softhsm/libsofthsm2.so")
	f.Add("pkcs11:slot-id=3;serial=x?module-path=%2Fa")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := hsm.ParseURI(s)
		if err != nil {
			return
		}
		if _, err := hsm.ParseURI(u.String()); err != nil {
			t.Fatalf("accepted %q but not its rendering %q: %v", s, u.String(), err)
		}
	})
}
