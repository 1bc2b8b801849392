package hsm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

var allKinds = []hsm.Kind{hsm.KindAES256, hsm.KindHMACSHA256, hsm.KindECDSAP256, hsm.KindECDSAP384, hsm.KindEd25519, hsm.KindRSA3072PSS, hsm.KindAuditP256}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestCreateEveryKindInCustody(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	for _, kind := range allKinds {
		k, attrs, err := m.CreateKey(ctx, kind, "k-"+kind.String())
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		if !attrs.InCustody() {
			t.Errorf("%s: not in custody: %+v", kind, attrs)
		}
		if len(k.ID) != 16 {
			t.Errorf("%s: id %x", kind, k.ID)
		}
		again, err := m.Attributes(ctx, k)
		if err != nil || again != attrs {
			t.Errorf("%s: attributes read again: %+v %v", kind, again, err)
		}
	}
}

func TestCreateRefusesExistingLabel(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	if _, _, err := m.CreateKey(ctx, hsm.KindAES256, "dup"); err != nil {
		t.Fatal(err)
	}
	_, _, err := m.CreateKey(ctx, hsm.KindECDSAP256, "dup")
	if !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("second create with same label: %v, want ErrExists", err)
	}
}

func TestOpenErrorsNameTheCauseAndNeverThePIN(t *testing.T) {
	tok := hsmtest.New(t)
	ctx := ctxT(t)
	cases := []struct {
		name string
		cfg  hsm.Config
		want error
		says string
	}{
		{"wrong pin", hsm.Config{URI: tok.URI, PIN: []byte("wrong-pin-9876")}, hsm.ErrLogin, "refused the PIN"},
		{"missing token", hsm.Config{URI: "pkcs11:token=nope?module-path=" + tok.Library, PIN: []byte(tok.PIN)}, hsm.ErrNotFound, `token nope not found`},
		// SoftHSM looks for tokens where SOFTHSM2_CONF says: the error names it.
		{"missing token names SOFTHSM2_CONF", hsm.Config{URI: "pkcs11:token=nope?module-path=" + tok.Library, PIN: []byte(tok.PIN)}, hsm.ErrNotFound,
			"SOFTHSM2_CONF=" + os.Getenv("SOFTHSM2_CONF")},
		{"missing module", hsm.Config{URI: "pkcs11:token=x?module-path=/nonexistent/libp11.so", PIN: []byte(tok.PIN)}, hsm.ErrUnavailable, "/nonexistent/libp11.so"},
		{"pin in uri", hsm.Config{URI: tok.URI + "&pin-value=" + tok.PIN, PIN: []byte(tok.PIN)}, hsm.ErrInvalidInput, "pin-value is refused"},
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
}

func TestMechanismProbeFindsEverythingOnSoftHSM(t *testing.T) {
	m, _ := hsmtest.Open(t)
	if missing := m.Missing(); len(missing) != 0 {
		t.Fatalf("SoftHSM 2.6 reported missing mechanisms: %v", missing)
	}
	st := m.Stats()
	if st.State != hsm.StateReady || st.SessionsMax < 1 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestIndexCachesEveryKeyOnce(t *testing.T) {
	m, tok := hsmtest.Open(t)
	ctx := ctxT(t)
	var made []hsm.Key
	for i, kind := range []hsm.Kind{hsm.KindAES256, hsm.KindHMACSHA256, hsm.KindECDSAP256, hsm.KindEd25519} {
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
}
