package server_test

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/testenv"
)

func wantMessage(t *testing.T, err error, part string) {
	t.Helper()
	if !strings.Contains(status.Convert(err).Message(), part) {
		t.Fatalf("error %q does not mention %q", status.Convert(err).Message(), part)
	}
}

func envelopeFormat(t *testing.T, b []byte) byte {
	t.Helper()
	env, err := keys.Parse(b)
	if err != nil {
		t.Fatalf("wrapped key does not parse: %v", err)
	}
	return env.Format
}

func TestPlaintextDataKeysCreateNoHSMObject(t *testing.T) {
	e := dkEnv(t)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	encCtx := map[string]string{"conversation": "1"}
	before := e.D.HSM.Stats().SessionObjects
	const n = 50
	for i := range n {
		dk, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "dk", Context: encCtx})
		if err != nil {
			t.Fatal(err)
		}
		if f := envelopeFormat(t, dk.WrappedKey); f != keys.FormatSealedKey {
			t.Fatalf("call %d: plaintext data key in format 0x%02x, want sealed 0x03", i, f)
		}
		un, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "dk", WrappedKey: dk.WrappedKey, Context: encCtx})
		if err != nil || !bytes.Equal(un.Plaintext, dk.Plaintext) || len(dk.Plaintext) != 32 {
			t.Fatalf("call %d: unwrap: %v", i, err)
		}
	}
	if got := e.D.HSM.Stats().SessionObjects - before; got != 0 {
		t.Fatalf("%d plaintext GenerateDataKey+Unwrap created %d HSM session objects, want 0", n, got)
	}
	// The paths that must keep the key inside the HSM still do, and say so.
	_, der := relayRSA(t)
	wo, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "dk", Context: encCtx, WithoutPlaintext: true})
	if err != nil || wo.Plaintext != nil || envelopeFormat(t, wo.WrappedKey) != keys.FormatWrappedKey {
		t.Fatalf("without_plaintext: %v, plaintext %d bytes", err, len(wo.GetPlaintext()))
	}
	tr, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "dk", Context: encCtx, RecipientPublicKey: der})
	if err != nil || tr.Plaintext != nil || envelopeFormat(t, tr.WrappedKey) != keys.FormatWrappedKey {
		t.Fatalf("recipient: %v", err)
	}
	if got := e.D.HSM.Stats().SessionObjects - before; got == 0 {
		t.Fatal("KWP paths created no session object: the counter behind recycling is not counting")
	}
}

func TestSealedDataKeyRefusesOtherContextTamperingAndOtherOperations(t *testing.T) {
	e := dkEnv(t)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	encCtx := map[string]string{"conversation": "1"}
	dk, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "dk", Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "dk", WrappedKey: dk.WrappedKey, Context: map[string]string{"conversation": "2"}})
	wantCode(t, err, codes.InvalidArgument, "sealed key under another context")
	_, err = c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "dk", WrappedKey: dk.WrappedKey})
	wantCode(t, err, codes.InvalidArgument, "sealed key without its context")
	for _, at := range []int{len(dk.WrappedKey) - 1, len(dk.WrappedKey) - 20, 25} {
		bad := bytes.Clone(dk.WrappedKey)
		bad[at] ^= 1
		_, err = c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "dk", WrappedKey: bad, Context: encCtx})
		wantCode(t, err, codes.InvalidArgument, "tampered sealed key")
	}
	// Same bytes, a key the relay is not granted: refused before the HSM is asked.
	_, err = c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "secret", WrappedKey: dk.WrappedKey, Context: encCtx})
	wantCode(t, err, codes.PermissionDenied, "sealed key on an ungranted key")
	// A sealed key is not a ciphertext and a ciphertext is not a sealed key,
	// even relabelled (the AAD domains differ).
	relabelled := bytes.Clone(dk.WrappedKey)
	relabelled[0] = keys.FormatCiphertext
	if _, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "dk", WrappedKey: relabelled, Context: encCtx}); err == nil {
		t.Fatal("a sealed key relabelled as a ciphertext was unwrapped")
	}
}

func TestSealedDataKeyToRecipientOnlyUnderAPlaintextGrant(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	_, der := relayRSA(t)
	encCtx := map[string]string{"conversation": "7"}
	dk, err := e.Crypto(t, "relay").GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "dk", Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	// The plaintext-granted relay may have it encrypted to its pinned key.
	un, err := e.Crypto(t, "relay").Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "dk", WrappedKey: dk.WrappedKey, Context: encCtx, RecipientPublicKey: der})
	if err != nil {
		t.Fatal(err)
	}
	if un.Plaintext != nil || un.RecipientWrapping != "RSA-OAEP-SHA256" {
		t.Fatalf("plaintext %d bytes, wrapping %q", len(un.Plaintext), un.RecipientWrapping)
	}
	if got := oaepDecrypt(t, un.RecipientWrapping, un.RecipientWrappedKey); !bytes.Equal(got, dk.Plaintext) {
		t.Fatal("recipient copy is another key")
	}
	// A transport-only relay is refused before anything is decrypted, with
	// a reason it can act on; its own KWP keys still work.
	to := e.Crypto(t, "transport-only")
	_, err = to.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "dk", WrappedKey: dk.WrappedKey, Context: encCtx, RecipientPublicKey: der})
	wantCode(t, err, codes.FailedPrecondition, "sealed key to a recipient under a transport-only grant")
	wantMessage(t, err, "without_plaintext")
	own, err := to.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "dk", Context: encCtx, RecipientPublicKey: der})
	if err != nil {
		t.Fatal(err)
	}
	again, err := to.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "dk", WrappedKey: own.WrappedKey, Context: encCtx, RecipientPublicKey: der})
	if err != nil || !bytes.Equal(oaepDecrypt(t, again.RecipientWrapping, again.RecipientWrappedKey), oaepDecrypt(t, own.RecipientWrapping, own.RecipientWrappedKey)) {
		t.Fatalf("transport-only relay cannot reopen its own key: %v", err)
	}
	// Stored: a plaintext grant may store and fetch a sealed key; the
	// transport-only relay may not store one (storing checks by opening).
	st := dataKeys(t, e, "relay")
	if _, err := st.StoreDataKey(x, &custodyv1.StoreDataKeyRequest{KeyName: "dk", Id: "sealed-1", Context: encCtx,
		Source: &custodyv1.StoreDataKeyRequest_WrappedKey{WrappedKey: dk.WrappedKey}}); err != nil {
		t.Fatal(err)
	}
	f, err := st.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "sealed-1", Context: encCtx})
	if err != nil || !bytes.Equal(f.Plaintext, dk.Plaintext) {
		t.Fatalf("fetch of a stored sealed key: %v", err)
	}
	_, err = dataKeys(t, e, "transport-only").StoreDataKey(x, &custodyv1.StoreDataKeyRequest{KeyName: "dk", Id: "sealed-2", Context: encCtx,
		Source: &custodyv1.StoreDataKeyRequest_WrappedKey{WrappedKey: dk.WrappedKey}})
	wantCode(t, err, codes.FailedPrecondition, "transport-only relay storing a sealed key")
	_, err = dataKeys(t, e, "transport-only").FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "sealed-1", Context: encCtx, RecipientPublicKey: der})
	wantCode(t, err, codes.FailedPrecondition, "transport-only relay fetching a stored sealed key")
	// Stored keys custodyd generates stay KWP, so transport-only relays can fetch them.
	if _, err := st.StoreDataKey(x, generate("dk", "kwp-1", encCtx)); err != nil {
		t.Fatal(err)
	}
	if _, err := dataKeys(t, e, "transport-only").FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "kwp-1", Context: encCtx, RecipientPublicKey: der}); err != nil {
		t.Fatalf("transport-only fetch of a generated stored key: %v", err)
	}
}

func TestRewrapKeepsTheDataKeyFormat(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{
		ExtraClients: []string{"transport-only"},
		Mutate: func(e *testenv.Env, c *config.Config) {
			c.Identities = append(c.Identities, config.IdentityConfig{Name: "transport-only", Role: config.RoleRelay, URI: e.Cert["transport-only"].Identity})
			ops := []config.Operation{config.OpDataKey, config.OpUnwrap, config.OpRewrap}
			c.Grants = append(c.Grants,
				config.GrantConfig{Identity: "dev-relay", Keys: []string{"rw"}, Operations: ops, AllowPlaintext: true},
				config.GrantConfig{Identity: "transport-only", Keys: []string{"rw"}, Operations: []config.Operation{config.OpRewrap}})
		},
	})
	e.CreateKey(t, "rw", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	encCtx := map[string]string{"conversation": "9"}
	sealed, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "rw", Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	kwp, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "rw", Context: encCtx, WithoutPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	kwpPlain, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "rw", WrappedKey: kwp.WrappedKey, Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Keys(t, "operator").RotateKey(x, &custodyv1.RotateKeyRequest{Name: "rw"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		wrapped []byte
		plain   []byte
		format  byte
	}{
		{"sealed", sealed.WrappedKey, sealed.Plaintext, keys.FormatSealedKey},
		{"kwp", kwp.WrappedKey, kwpPlain.Plaintext, keys.FormatWrappedKey},
	} {
		rw, err := c.Rewrap(x, &custodyv1.RewrapRequest{KeyName: "rw", WrappedKey: tc.wrapped, Context: encCtx})
		if err != nil {
			t.Fatalf("%s: rewrap: %v", tc.name, err)
		}
		env, err := keys.Parse(rw.WrappedKey)
		if err != nil || env.Format != tc.format || env.Version != 2 || rw.KeyVersion != 2 {
			t.Fatalf("%s: rewrapped to %+v (%v), want format 0x%02x under version 2", tc.name, env, err, tc.format)
		}
		un, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "rw", WrappedKey: rw.WrappedKey, Context: encCtx})
		if err != nil || !bytes.Equal(un.Plaintext, tc.plain) {
			t.Fatalf("%s: the rewrapped key opens to another key: %v", tc.name, err)
		}
		_, err = c.Rewrap(x, &custodyv1.RewrapRequest{KeyName: "rw", WrappedKey: tc.wrapped, Context: map[string]string{"conversation": "8"}})
		wantCode(t, err, codes.InvalidArgument, tc.name+": rewrap under another context")
	}
	// Rewrapping a sealed key puts it in custodyd's memory: only under a
	// plaintext grant. A KWP key rewraps inside the HSM for anyone granted.
	to := e.Crypto(t, "transport-only")
	_, err = to.Rewrap(x, &custodyv1.RewrapRequest{KeyName: "rw", WrappedKey: sealed.WrappedKey, Context: encCtx})
	wantCode(t, err, codes.FailedPrecondition, "transport-only rewrap of a sealed key")
	if _, err := to.Rewrap(x, &custodyv1.RewrapRequest{KeyName: "rw", WrappedKey: kwp.WrappedKey, Context: encCtx}); err != nil {
		t.Fatalf("transport-only rewrap of a KWP key: %v", err)
	}
}
