package hsm_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

var allKinds = []hsm.Kind{hsm.KindAES256, hsm.KindHMACSHA256, hsm.KindECDSAP256, hsm.KindECDSAP384, hsm.KindEd25519, hsm.KindRSA3072PSS, hsm.KindAuditP256}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// missingKinds are the key kinds a token cannot make, with the mechanism
// it lacks: creating one must fail with ErrUnsupported naming it, and every
// other kind keeps working.
var missingKinds = map[hsmtest.Kind]map[hsm.Kind]string{
	hsmtest.NSS: {hsm.KindEd25519: "CKM_EC_EDWARDS_KEY_PAIR_GEN"}, // NSS softokn 3.87 has no Ed25519
}

// kindsOn are the kinds tok can make.
func kindsOn(tok *hsmtest.Token) []hsm.Kind {
	var out []hsm.Kind
	for _, k := range allKinds {
		if _, missing := missingKinds[tok.Kind][k]; !missing {
			out = append(out, k)
		}
	}
	return out
}

// unverifiedOn are the custody properties each token cannot be shown to
// have; its keys record them.
var unverifiedOn = map[hsmtest.Kind][]string{
	hsmtest.SoftHSM: nil,
	// CKA_LOCAL reads false (profile waiver); CKA_EXTRACTABLE=false is not
	// enforced on C_WrapKey (the probe wraps a non-extractable key out).
	hsmtest.NSS: {"local", "extractable_enforced"},
}

func TestCreateEveryKindInCustody(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		for _, kind := range allKinds {
			k, attrs, err := m.CreateKey(ctx, kind, "k-"+kind.String())
			if mech, missing := missingKinds[tok.Kind][kind]; missing {
				if !errors.Is(err, hsm.ErrUnsupported) || !strings.Contains(err.Error(), mech) {
					t.Errorf("%s on %s: %v, want ErrUnsupported naming %s", kind, tok.Kind, err, mech)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			if !attrs.Accepted() {
				t.Errorf("%s: not in custody: %+v", kind, attrs)
			}
			if got, want := attrs.Unverified.Strings(), unverifiedOn[tok.Kind]; !slices.Equal(got, want) {
				t.Errorf("%s: unverified %v, want %v", kind, got, want)
			}
			if attrs.InCustody() != (len(unverifiedOn[tok.Kind]) == 0) {
				t.Errorf("%s: InCustody %v with unverified %v", kind, attrs.InCustody(), attrs.Unverified.Strings())
			}
			if len(k.ID) != 16 {
				t.Errorf("%s: id %x", kind, k.ID)
			}
			again, err := m.Attributes(ctx, k)
			if err != nil || again != attrs {
				t.Errorf("%s: attributes read again: %+v %v", kind, again, err)
			}
			for _, a := range attrs.Unverified.List() {
				if m.Why(a) == "" {
					t.Errorf("%s: unverified %s without a reason", kind, a)
				}
			}
		}
	})
}

func TestCreateRefusesExistingLabel(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		if _, _, err := m.CreateKey(ctx, hsm.KindAES256, "dup"); err != nil {
			t.Fatal(err)
		}
		_, _, err := m.CreateKey(ctx, hsm.KindECDSAP256, "dup")
		if !errors.Is(err, hsm.ErrExists) {
			t.Fatalf("second create with same label: %v, want ErrExists", err)
		}
	})
}

func TestOpenErrorsNameTheCauseAndNeverThePIN(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		ctx := ctxT(t)
		with := func(f func(*hsm.Config)) hsm.Config {
			c := tok.Config()
			f(&c)
			return c
		}
		cases := []struct {
			name string
			cfg  hsm.Config
			want error
			says string
		}{
			{"wrong pin", with(func(c *hsm.Config) { c.PIN = []byte("wrong-pin-9876") }), hsm.ErrLogin, "refused the PIN"},
			{"missing token", with(func(c *hsm.Config) { c.URI = "pkcs11:token=nope?module-path=" + tok.Library }), hsm.ErrNotFound, `token nope not found`},
			{"missing module", with(func(c *hsm.Config) { c.URI = "pkcs11:token=x?module-path=/nonexistent/libp11.so" }), hsm.ErrUnavailable, "/nonexistent/libp11.so"},
			{"pin in uri", with(func(c *hsm.Config) { c.URI = tok.URI + "&pin-value=" + tok.PIN }), hsm.ErrInvalidInput, "pin-value is refused"},
			{"unknown profile", with(func(c *hsm.Config) { c.Profile = "thales" }), hsm.ErrInvalidInput, `unknown hsm profile "thales"`},
			{"pin the profile says is malformed", with(func(c *hsm.Config) { c.Profile, c.PIN = "yubihsm", []byte("wrong-pin-9876") }), hsm.ErrLogin, "4 hex digits"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				m, err := hsm.Open(ctx, c.cfg)
				if err == nil {
					m.Close()
					t.Fatal("opened")
				}
				if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
					t.Fatalf("err = %v; want %v mentioning %q", err, c.want, c.says)
				}
				for _, secret := range []string{tok.PIN, "wrong-pin-9876"} {
					if strings.Contains(err.Error(), secret) {
						t.Fatalf("error contains a PIN: %v", err)
					}
				}
			})
		}
		// The right PIN still works: the wrong one was tried once, not until lockout.
		tok.Open(t)
	})
}

func TestIndexCachesEveryKeyOnce(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		var made []hsm.Key
		for i, kind := range []hsm.Kind{hsm.KindAES256, hsm.KindHMACSHA256, hsm.KindECDSAP256, hsm.KindECDSAP384} {
			k, _, err := m.CreateKey(ctx, kind, fmt.Sprintf("k%d", i))
			if err != nil {
				t.Fatal(err)
			}
			made = append(made, k)
		}
		// A fresh process: nothing cached yet.
		m.Close()
		m2 := tok.Open(t)
		n, err := m2.Index(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n != 2+2*2 { // two secret keys, two pairs (private + public)
			t.Fatalf("indexed %d handles, want 6", n)
		}
		for _, k := range made {
			if err := m2.Find(ctx, k); err != nil {
				t.Fatalf("find %s after index: %v", k, err)
			}
		}
		if _, _, err := m2.Encrypt(ctx, made[0], []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	})
}
