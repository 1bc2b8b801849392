package hsm_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"math/big"
	"testing"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// TestOAEPHashIsDecidedPerModuleNeverByCallers: which OAEP hash a module
// wraps recipient keys with is decided by that module's own probe, once per
// (re)initialisation. A caller's refused or odd recipient key must not
// change what the next caller gets, and one module's token must not decide
// for another: SoftHSM cannot do OAEP with SHA-256, NSS can, and both run
// one after the other in this process.
func TestOAEPHashIsDecidedPerModuleNeverByCallers(t *testing.T) {
	ctx := ctxT(t)
	relay, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	// A 3072-bit "modulus" that is a power of two: SoftHSM refuses to wrap
	// to it (CKR_GENERAL_ERROR), NSS wraps to it.
	odd := &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 3071), E: 65537}

	for _, c := range []struct {
		kind    hsmtest.Kind
		want    crypto.Hash
		oddFail bool
	}{
		{hsmtest.SoftHSM, crypto.SHA1, true},
		{hsmtest.NSS, crypto.SHA256, false},
		{hsmtest.SoftHSM, crypto.SHA1, true},
	} {
		m := hsmtest.NewKind(t, c.kind).Open(t)
		if got := m.Capabilities().OAEPHash(); got != c.want {
			t.Fatalf("%s: probe chose %v before any caller, want %v", c.kind, got, c.want)
		}
		master, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			_, _, _, err := m.GenerateDataKeyFor(ctx, master, odd)
			if c.oddFail && !errors.Is(err, hsm.ErrInvalidInput) {
				t.Fatalf("%s: odd recipient: %v, want ErrInvalidInput", c.kind, err)
			}
			if !c.oddFail && err != nil {
				t.Fatalf("%s: odd recipient: %v", c.kind, err)
			}
		}
		_, forRelay, how, err := m.GenerateDataKeyFor(ctx, master, &relay.PublicKey)
		if err != nil {
			t.Fatalf("%s: %v", c.kind, err)
		}
		if how.Hash != c.want {
			t.Fatalf("%s: the next caller got %s, want %v: an earlier caller or module decided for it", c.kind, how, c.want)
		}
		if _, err := rsa.DecryptOAEP(how.Hash.New(), nil, relay, forRelay, nil); err != nil {
			t.Fatalf("%s: relay cannot open its key with %s: %v", c.kind, how, err)
		}
		if got := m.Capabilities().OAEPHash(); got != c.want {
			t.Fatalf("%s: callers changed the module's choice to %v", c.kind, got)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
