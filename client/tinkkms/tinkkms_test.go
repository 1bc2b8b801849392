package tinkkms_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead"

	"github.com/custodyhq/custody/client"
	"github.com/custodyhq/custody/client/tinkkms"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/testenv"
)

func relayClient(t *testing.T, e *testenv.Env) *client.Client {
	t.Helper()
	cp := e.Cert["relay"]
	c, err := client.Dial(context.Background(), client.Config{
		Addr: e.Addr, CAFile: e.CAFile, CertFile: cp.CertFile, KeyFile: cp.KeyFile,
		ServerName: "localhost", Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestSupportedAcceptsOnlyCustodyURIsWithinThePrefix(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	c := relayClient(t, e)
	all, err := tinkkms.New(c, "custody://")
	if err != nil {
		t.Fatal(err)
	}
	one, err := tinkkms.New(c, "custody://payments")
	if err != nil {
		t.Fatal(err)
	}
	for uri, want := range map[string][2]bool{ // {all, one}
		"custody://payments":        {true, true},
		"custody://payments.v2":     {true, true},
		"custody://messages":        {true, false},
		"custody://":                {false, false},
		"custody://.hidden":         {false, false},
		"custody://a/b":             {false, false},
		"aws-kms://arn:aws:kms:x":   {false, false},
		"gcp-kms://projects/p/keys": {false, false},
		"CUSTODY://payments":        {false, false},
		"custody://pay ments":       {false, false},
	} {
		if got := all.Supported(uri); got != want[0] {
			t.Errorf("custody:// client: Supported(%q) = %v, want %v", uri, got, want[0])
		}
		if got := one.Supported(uri); got != want[1] {
			t.Errorf("custody://payments client: Supported(%q) = %v, want %v", uri, got, want[1])
		}
	}
	if _, err := all.GetAEAD("gcp-kms://x"); !errors.Is(err, tinkkms.ErrUnsupportedURI) {
		t.Errorf("GetAEAD of a foreign URI: err = %v, want %v", err, tinkkms.ErrUnsupportedURI)
	}
	if _, err := tinkkms.New(c, "aws-kms://"); !errors.Is(err, tinkkms.ErrUnsupportedURI) {
		t.Errorf("New with a foreign prefix: err = %v, want %v", err, tinkkms.ErrUnsupportedURI)
	}
}

func TestTinkEnvelopeAEADRoundTripsThroughCustody(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	kms, err := tinkkms.New(relayClient(t, e), "custody://")
	if err != nil {
		t.Fatal(err)
	}
	uri := "custody://" + daemon.DevKey
	if !kms.Supported(uri) {
		t.Fatalf("%s not supported", uri)
	}
	remote, err := kms.GetAEAD(uri)
	if err != nil {
		t.Fatal(err)
	}
	env := aead.NewKMSEnvelopeAEAD2(aead.AES256GCMKeyTemplate(), remote)
	pt := bytes.Repeat([]byte("tink over custody "), 1000)
	ad := []byte("row 17 of table payments")
	ct, err := env.Encrypt(pt, ad)
	if err != nil {
		t.Fatalf("envelope encrypt: %v", err)
	}
	if bytes.Contains(ct, []byte("tink over custody")) {
		t.Fatal("ciphertext contains plaintext")
	}
	got, err := env.Decrypt(ct, ad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("envelope decrypt: %d bytes, %v", len(got), err)
	}
	if _, err := env.Decrypt(ct, []byte("row 18 of table payments")); err == nil {
		t.Fatal("envelope decrypted with other associated data")
	}
}

func TestRemoteAEADBindsAssociatedDataAsContext(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	kms, err := tinkkms.New(relayClient(t, e), "custody://")
	if err != nil {
		t.Fatal(err)
	}
	remote, err := kms.GetAEAD("custody://" + daemon.DevKey)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := remote.Encrypt([]byte("dek"), []byte("ad-1"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := remote.Decrypt(ct, []byte("ad-1")); err != nil || string(pt) != "dek" {
		t.Fatalf("decrypt: %q, %v", pt, err)
	}
	for _, ad := range [][]byte{[]byte("ad-2"), nil} {
		if pt, err := remote.Decrypt(ct, ad); err == nil {
			t.Fatalf("decrypted with associated data %q: %q", ad, pt)
		}
	}
	// Empty and nil associated data are the same thing to an AEAD.
	ct2, err := remote.Encrypt([]byte("dek"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := remote.Decrypt(ct2, []byte{}); err != nil || string(pt) != "dek" {
		t.Fatalf("nil-AD ciphertext with empty AD: %q, %v", pt, err)
	}
}
