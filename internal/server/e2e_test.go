package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/testenv"
)

var allOps = []config.Operation{config.OpEncrypt, config.OpDecrypt, config.OpDataKey, config.OpUnwrap, config.OpRewrap,
	config.OpSign, config.OpVerify, config.OpPublicKey, config.OpMAC, config.OpVerifyMAC}

var testKeys = map[string]custodyv1.KeyPurpose{
	"enc":    custodyv1.KeyPurpose_ENCRYPT_AES256_GCM,
	"mac":    custodyv1.KeyPurpose_MAC_HMAC_SHA256,
	"p256":   custodyv1.KeyPurpose_SIGN_ECDSA_P256,
	"p384":   custodyv1.KeyPurpose_SIGN_ECDSA_P384,
	"ed":     custodyv1.KeyPurpose_SIGN_ED25519,
	"rsa":    custodyv1.KeyPurpose_SIGN_RSA_PSS_3072,
	"secret": custodyv1.KeyPurpose_ENCRYPT_AES256_GCM, // never granted
}

func start(t *testing.T, extra ...string) *testenv.Env {
	names := []string{"enc", "mac", "p256", "p384", "ed", "rsa"}
	return testenv.Start(t, testenv.Settings{
		ExtraClients: append([]string{"stranger"}, extra...),
		Mutate:       testenv.Grant("relay", names, allOps, true),
	})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func code(err error) codes.Code { return status.Code(err) }

func wantCode(t *testing.T, err error, want codes.Code, what string) {
	t.Helper()
	if got := code(err); got != want {
		t.Fatalf("%s: code %v (%v), want %v", what, got, err, want)
	}
}

func createAll(t *testing.T, e *testenv.Env) {
	for name, p := range testKeys {
		e.CreateKey(t, name, p)
	}
}

func TestEveryCryptoRPCHappyPath(t *testing.T) {
	e := start(t)
	createAll(t, e)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	encCtx := map[string]string{"tenant": "acme", "conversation": "42"}

	enc, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("hello"), Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: enc.Ciphertext, Context: encCtx})
	if err != nil || string(dec.Plaintext) != "hello" || dec.KeyVersion != 1 {
		t.Fatalf("decrypt: %v %q", err, dec.GetPlaintext())
	}

	dk, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "enc", Context: encCtx})
	if err != nil || len(dk.Plaintext) != 32 || len(dk.WrappedKey) == 0 {
		t.Fatalf("datakey: %v", err)
	}
	un, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "enc", WrappedKey: dk.WrappedKey, Context: encCtx})
	if err != nil || !bytes.Equal(un.Plaintext, dk.Plaintext) {
		t.Fatalf("unwrap: %v", err)
	}
	wo, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "enc", Context: encCtx, WithoutPlaintext: true})
	if err != nil || wo.Plaintext != nil {
		t.Fatalf("datakey without plaintext: %v", err)
	}
	rw, err := c.Rewrap(x, &custodyv1.RewrapRequest{KeyName: "enc", WrappedKey: dk.WrappedKey, Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	un2, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "enc", WrappedKey: rw.WrappedKey, Context: encCtx})
	if err != nil || !bytes.Equal(un2.Plaintext, dk.Plaintext) {
		t.Fatalf("unwrap after rewrap: %v", err)
	}

	msg := []byte("sign me")
	for _, name := range []string{"p256", "p384", "ed", "rsa"} {
		sig, err := c.Sign(x, &custodyv1.SignRequest{KeyName: name, Input: &custodyv1.SignRequest_Message{Message: msg}})
		if err != nil {
			t.Fatalf("sign %s: %v", name, err)
		}
		pub, err := c.GetPublicKey(x, &custodyv1.GetPublicKeyRequest{KeyName: name})
		if err != nil || !strings.Contains(pub.Pem, "PUBLIC KEY") {
			t.Fatalf("pubkey %s: %v", name, err)
		}
		pk, err := x509.ParsePKIXPublicKey(pub.Der)
		if err != nil {
			t.Fatal(err)
		}
		var ok bool
		switch k := pk.(type) {
		case *ecdsa.PublicKey:
			if name == "p384" {
				d := sha512.Sum384(msg)
				ok = ecdsa.VerifyASN1(k, d[:], sig.Signature)
			} else {
				d := sha256.Sum256(msg)
				ok = ecdsa.VerifyASN1(k, d[:], sig.Signature)
			}
		case ed25519.PublicKey:
			ok = ed25519.Verify(k, msg, sig.Signature)
		case *rsa.PublicKey:
			d := sha256.Sum256(msg)
			ok = rsa.VerifyPSS(k, 5 /* crypto.SHA256 */, d[:], sig.Signature, &rsa.PSSOptions{SaltLength: 32}) == nil
		}
		if !ok {
			t.Errorf("%s: signature does not verify with the standard library", name)
		}
		v, err := c.Verify(x, &custodyv1.VerifyRequest{KeyName: name, Input: &custodyv1.VerifyRequest_Message{Message: msg}, Signature: sig.Signature})
		if err != nil || !v.Valid {
			t.Errorf("verify %s: %v %v", name, v.GetValid(), err)
		}
		bad := bytes.Clone(sig.Signature)
		bad[len(bad)/2] ^= 1
		if v, _ := c.Verify(x, &custodyv1.VerifyRequest{KeyName: name, Input: &custodyv1.VerifyRequest_Message{Message: msg}, Signature: bad}); v.GetValid() {
			t.Errorf("%s: tampered signature verifies", name)
		}
	}
	d := sha256.Sum256(msg)
	if _, err := c.Sign(x, &custodyv1.SignRequest{KeyName: "p256", Input: &custodyv1.SignRequest_Digest{Digest: d[:]}}); err != nil {
		t.Fatalf("sign digest: %v", err)
	}

	mac, err := c.Mac(x, &custodyv1.MacRequest{KeyName: "mac", Data: msg})
	if err != nil || len(mac.Mac) != 32 {
		t.Fatal(err)
	}
	vm, err := c.VerifyMac(x, &custodyv1.VerifyMacRequest{KeyName: "mac", Data: msg, Mac: mac.Mac})
	if err != nil || !vm.Valid {
		t.Fatalf("verify mac: %v", err)
	}
	vm, _ = c.VerifyMac(x, &custodyv1.VerifyMacRequest{KeyName: "mac", Data: []byte("other"), Mac: mac.Mac})
	if vm.GetValid() {
		t.Fatal("mac of other data verifies")
	}

	// Batches.
	be, err := c.BatchEncrypt(x, &custodyv1.BatchEncryptRequest{Items: []*custodyv1.EncryptRequest{
		{KeyName: "enc", Plaintext: []byte("a")}, {KeyName: "enc", Plaintext: []byte("b"), Context: encCtx}, {KeyName: "secret", Plaintext: []byte("c")},
	}})
	if err != nil || len(be.Results) != 3 {
		t.Fatalf("batch encrypt: %v", err)
	}
	if e := be.Results[2].GetError(); e == nil || codes.Code(e.Code) != codes.PermissionDenied {
		t.Fatalf("batch item on ungranted key: %v", be.Results[2])
	}
	bd, err := c.BatchDecrypt(x, &custodyv1.BatchDecryptRequest{Items: []*custodyv1.DecryptRequest{
		{KeyName: "enc", Ciphertext: be.Results[0].GetResponse().Ciphertext},
		{KeyName: "enc", Ciphertext: be.Results[1].GetResponse().Ciphertext, Context: encCtx},
		{KeyName: "enc", Ciphertext: be.Results[1].GetResponse().Ciphertext}, // context missing
	}})
	if err != nil || string(bd.Results[0].GetResponse().GetPlaintext()) != "a" || string(bd.Results[1].GetResponse().GetPlaintext()) != "b" {
		t.Fatalf("batch decrypt: %v %v", err, bd)
	}
	if e := bd.Results[2].GetError(); e == nil || codes.Code(e.Code) != codes.InvalidArgument {
		t.Fatalf("batch decrypt with wrong context: %v", bd.Results[2])
	}
	bu, err := c.BatchUnwrap(x, &custodyv1.BatchUnwrapRequest{Items: []*custodyv1.UnwrapRequest{{KeyName: "enc", WrappedKey: dk.WrappedKey, Context: encCtx}}})
	if err != nil || !bytes.Equal(bu.Results[0].GetResponse().GetPlaintext(), dk.Plaintext) {
		t.Fatalf("batch unwrap: %v", err)
	}

	// Health.
	h, err := healthpb.NewHealthClient(e.Dial(t, "relay")).Check(x, &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
}

func TestKeyLifecycleRotateDisableMinVersionDestroyAndRestart(t *testing.T) {
	e := start(t)
	x := ctx(t)
	ks := e.Keys(t, "operator")
	created := e.CreateKey(t, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	if created.PrimaryVersion != 1 || !created.Versions[0].Attributes.NeverExtractable || created.Versions[0].Attributes.Extractable {
		t.Fatalf("created: %v", created)
	}
	c := e.Crypto(t, "relay")
	v1ct, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("old")})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := ks.RotateKey(x, &custodyv1.RotateKeyRequest{Name: "enc"})
	if err != nil || rot.PrimaryVersion != 2 || len(rot.Versions) != 2 {
		t.Fatalf("rotate: %v %v", rot, err)
	}
	v2ct, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("new")})
	if err != nil || v2ct.KeyVersion != 2 {
		t.Fatalf("encrypt after rotate: %v", err)
	}
	if d, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: v1ct.Ciphertext}); err != nil || string(d.Plaintext) != "old" || d.KeyVersion != 1 {
		t.Fatalf("old ciphertext after rotation: %v", err)
	}

	// Keys and versions survive a restart.
	e.Restart(t)
	c = e.Crypto(t, "relay")
	ks = e.Keys(t, "operator")
	got, err := ks.GetKey(x, &custodyv1.GetKeyRequest{Name: "enc"})
	if err != nil || got.PrimaryVersion != 2 || len(got.Versions) != 2 {
		t.Fatalf("after restart: %v %v", got, err)
	}
	if d, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: v1ct.Ciphertext}); err != nil || string(d.Plaintext) != "old" {
		t.Fatalf("decrypt v1 after restart: %v", err)
	}

	// Disabled version refuses decrypt; re-enabled works again.
	if _, err := ks.DisableKeyVersion(x, &custodyv1.KeyVersionRequest{Name: "enc", Version: 1}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: v1ct.Ciphertext})
	wantCode(t, err, codes.FailedPrecondition, "decrypt with disabled version")
	_, err = ks.DisableKeyVersion(x, &custodyv1.KeyVersionRequest{Name: "enc", Version: 2})
	wantCode(t, err, codes.FailedPrecondition, "disable the primary")
	if _, err := ks.EnableKeyVersion(x, &custodyv1.KeyVersionRequest{Name: "enc", Version: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: v1ct.Ciphertext}); err != nil {
		t.Fatalf("re-enabled: %v", err)
	}
	// Minimum decryption version.
	if _, err := ks.SetMinDecryptionVersion(x, &custodyv1.SetMinDecryptionVersionRequest{Name: "enc", Version: 2}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: v1ct.Ciphertext})
	wantCode(t, err, codes.FailedPrecondition, "decrypt below min version")
	if _, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: v2ct.Ciphertext}); err != nil {
		t.Fatal(err)
	}

	// Destruction: schedule, cancel, schedule with a short period, and the
	// HSM object really disappears.
	hsmID := got.Versions[0].HsmKeyId
	if _, err := ks.ScheduleKeyDestruction(x, &custodyv1.ScheduleKeyDestructionRequest{Name: "enc", Version: 1, WaitingPeriod: durationpb.New(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	k, err := ks.CancelKeyDestruction(x, &custodyv1.KeyVersionRequest{Name: "enc", Version: 1})
	if err != nil || k.Versions[0].State != custodyv1.KeyVersionState_DISABLED {
		t.Fatalf("cancel: %v %v", k, err)
	}
	_, err = ks.ScheduleKeyDestruction(x, &custodyv1.ScheduleKeyDestructionRequest{Name: "enc", Version: 2, WaitingPeriod: durationpb.New(time.Second)})
	wantCode(t, err, codes.FailedPrecondition, "destroy the primary")
	if _, err := ks.ScheduleKeyDestruction(x, &custodyv1.ScheduleKeyDestructionRequest{Name: "enc", Version: 1, WaitingPeriod: durationpb.New(time.Second)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		k, err = ks.GetKey(x, &custodyv1.GetKeyRequest{Name: "enc"})
		if err == nil && k.Versions[0].State == custodyv1.KeyVersionState_DESTROYED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("version 1 not destroyed: %v %v", k, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	id := mustHex(t, hsmID)
	if err := e.D.HSM.Find(x, hsm.Key{ID: id, Kind: hsm.KindAES256}); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("hsm object of destroyed version: %v", err)
	}
	_, err = c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: v1ct.Ciphertext})
	wantCode(t, err, codes.FailedPrecondition, "decrypt with destroyed version")
	// The destruction itself is on the record, not only the request that
	// scheduled it: an intent before the HSM object went, then the outcome.
	var destroyed []string
	if err := readRecords(e.Config.Audit.Dir, func(r audit.Record) {
		if r.Method == "keys.destroy" {
			destroyed = append(destroyed, fmt.Sprintf("%s %s v%d %s", r.Identity, r.Key, r.KeyVersion, r.Outcome))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(destroyed, "; "), "custodyd enc v1 intent; custodyd enc v1 ok"; got != want {
		t.Fatalf("destruction records: %q, want %q", got, want)
	}

	// Paged listing.
	for _, n := range []string{"a1", "a2", "a3"} {
		e.CreateKey(t, n, custodyv1.KeyPurpose_MAC_HMAC_SHA256)
	}
	var names []string
	tok := ""
	for {
		page, err := ks.ListKeys(x, &custodyv1.ListKeysRequest{PageSize: 2, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range page.Keys {
			names = append(names, k.Name)
		}
		if tok = page.NextPageToken; tok == "" {
			break
		}
	}
	if strings.Join(names, ",") != "a1,a2,a3,demo,enc" {
		t.Fatalf("listed %v", names)
	}
}

func mustHex(t *testing.T, s string) []byte {
	b := make([]byte, len(s)/2)
	for i := range b {
		var v byte
		for _, c := range s[2*i : 2*i+2] {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= byte(c - '0')
			case c >= 'a' && c <= 'f':
				v |= byte(c-'a') + 10
			default:
				t.Fatalf("bad hex %q", s)
			}
		}
		b[i] = v
	}
	return b
}

// TestBadInputIsRefusedPreciselyAndChangesNothing sends malformed requests
// to every RPC and checks the code and that no key changed.
func TestBadInputIsRefusedPreciselyAndChangesNothing(t *testing.T) {
	e := start(t)
	createAll(t, e)
	x := ctx(t)
	c := e.Crypto(t, "relay")
	ks := e.Keys(t, "operator")
	before, err := ks.ListKeys(x, &custodyv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("x"), Context: map[string]string{"a": "b"}})
	dk, _ := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "enc"})
	tampered := bytes.Clone(ct.Ciphertext)
	tampered[len(tampered)-1] ^= 1
	big := make([]byte, 64<<10+1)
	badCtx := map[string]string{"": "empty key"}
	many := make([]*custodyv1.DecryptRequest, 101)
	for i := range many {
		many[i] = &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext}
	}
	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"encrypt no key name", func() error { _, err := c.Encrypt(x, &custodyv1.EncryptRequest{Plaintext: []byte("x")}); return err }, codes.InvalidArgument},
		{"encrypt oversized", func() error {
			_, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: big})
			return err
		}, codes.InvalidArgument},
		{"encrypt bad context", func() error {
			_, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Context: badCtx})
			return err
		}, codes.InvalidArgument},
		{"encrypt with mac key", func() error {
			_, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "mac", Plaintext: []byte("x")})
			return err
		}, codes.FailedPrecondition},
		{"encrypt unknown key", func() error {
			_, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "nope", Plaintext: []byte("x")})
			return err
		}, codes.PermissionDenied},
		{"decrypt garbage", func() error {
			_, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: []byte("garbage!")})
			return err
		}, codes.InvalidArgument},
		{"decrypt empty", func() error { _, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc"}); return err }, codes.InvalidArgument},
		{"decrypt tampered", func() error {
			_, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: tampered, Context: map[string]string{"a": "b"}})
			return err
		}, codes.InvalidArgument},
		{"decrypt wrong context", func() error {
			_, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext, Context: map[string]string{"a": "c"}})
			return err
		}, codes.InvalidArgument},
		{"decrypt under another granted key", func() error {
			_, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "demo", Ciphertext: ct.Ciphertext})
			return err
		}, codes.InvalidArgument},
		{"decrypt wrapped key as ciphertext", func() error {
			_, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: dk.WrappedKey})
			return err
		}, codes.InvalidArgument},
		{"unwrap garbage", func() error {
			_, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "enc", WrappedKey: []byte{2, 1, 2, 3}})
			return err
		}, codes.InvalidArgument},
		{"unwrap wrong context", func() error {
			_, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "enc", WrappedKey: dk.WrappedKey, Context: map[string]string{"x": "y"}})
			return err
		}, codes.InvalidArgument},
		{"unwrap bad recipient", func() error {
			_, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "enc", WrappedKey: dk.WrappedKey, RecipientPublicKey: []byte("nope")})
			return err
		}, codes.InvalidArgument},
		{"datakey with sign key", func() error {
			_, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "p256"})
			return err
		}, codes.FailedPrecondition},
		{"rewrap garbage", func() error {
			_, err := c.Rewrap(x, &custodyv1.RewrapRequest{KeyName: "enc", WrappedKey: []byte("zz")})
			return err
		}, codes.InvalidArgument},
		{"sign without input", func() error { _, err := c.Sign(x, &custodyv1.SignRequest{KeyName: "p256"}); return err }, codes.InvalidArgument},
		{"sign short digest", func() error {
			_, err := c.Sign(x, &custodyv1.SignRequest{KeyName: "p256", Input: &custodyv1.SignRequest_Digest{Digest: []byte("short")}})
			return err
		}, codes.InvalidArgument},
		{"sign ed25519 digest", func() error {
			_, err := c.Sign(x, &custodyv1.SignRequest{KeyName: "ed", Input: &custodyv1.SignRequest_Digest{Digest: make([]byte, 32)}})
			return err
		}, codes.InvalidArgument},
		{"sign with aes key", func() error {
			_, err := c.Sign(x, &custodyv1.SignRequest{KeyName: "enc", Input: &custodyv1.SignRequest_Message{Message: []byte("m")}})
			return err
		}, codes.FailedPrecondition},
		{"verify unknown version", func() error {
			_, err := c.Verify(x, &custodyv1.VerifyRequest{KeyName: "p256", KeyVersion: 9, Input: &custodyv1.VerifyRequest_Message{Message: []byte("m")}})
			return err
		}, codes.NotFound},
		{"pubkey of aes key", func() error { _, err := c.GetPublicKey(x, &custodyv1.GetPublicKeyRequest{KeyName: "enc"}); return err }, codes.FailedPrecondition},
		{"mac oversized", func() error { _, err := c.Mac(x, &custodyv1.MacRequest{KeyName: "mac", Data: big}); return err }, codes.InvalidArgument},
		{"mac with aes key", func() error { _, err := c.Mac(x, &custodyv1.MacRequest{KeyName: "enc", Data: []byte("d")}); return err }, codes.FailedPrecondition},
		{"verify-mac unknown version", func() error {
			_, err := c.VerifyMac(x, &custodyv1.VerifyMacRequest{KeyName: "mac", KeyVersion: 7, Data: []byte("d")})
			return err
		}, codes.NotFound},
		{"batch empty", func() error { _, err := c.BatchDecrypt(x, &custodyv1.BatchDecryptRequest{}); return err }, codes.InvalidArgument},
		{"batch oversized", func() error { _, err := c.BatchDecrypt(x, &custodyv1.BatchDecryptRequest{Items: many}); return err }, codes.InvalidArgument},
		{"batch encrypt empty", func() error { _, err := c.BatchEncrypt(x, &custodyv1.BatchEncryptRequest{}); return err }, codes.InvalidArgument},
		{"batch unwrap empty", func() error { _, err := c.BatchUnwrap(x, &custodyv1.BatchUnwrapRequest{}); return err }, codes.InvalidArgument},
		{"create empty name", func() error {
			_, err := ks.CreateKey(x, &custodyv1.CreateKeyRequest{Purpose: custodyv1.KeyPurpose_MAC_HMAC_SHA256})
			return err
		}, codes.InvalidArgument},
		{"create bad name", func() error {
			_, err := ks.CreateKey(x, &custodyv1.CreateKeyRequest{Name: "../etc", Purpose: custodyv1.KeyPurpose_MAC_HMAC_SHA256})
			return err
		}, codes.InvalidArgument},
		{"create no purpose", func() error { _, err := ks.CreateKey(x, &custodyv1.CreateKeyRequest{Name: "fresh"}); return err }, codes.InvalidArgument},
		{"create existing", func() error {
			_, err := ks.CreateKey(x, &custodyv1.CreateKeyRequest{Name: "enc", Purpose: custodyv1.KeyPurpose_MAC_HMAC_SHA256})
			return err
		}, codes.AlreadyExists},
		{"get unknown", func() error { _, err := ks.GetKey(x, &custodyv1.GetKeyRequest{Name: "nope"}); return err }, codes.NotFound},
		{"list negative page", func() error { _, err := ks.ListKeys(x, &custodyv1.ListKeysRequest{PageSize: -1}); return err }, codes.InvalidArgument},
		{"rotate unknown", func() error { _, err := ks.RotateKey(x, &custodyv1.RotateKeyRequest{Name: "nope"}); return err }, codes.NotFound},
		{"enable version 0", func() error { _, err := ks.EnableKeyVersion(x, &custodyv1.KeyVersionRequest{Name: "enc"}); return err }, codes.InvalidArgument},
		{"disable unknown version", func() error {
			_, err := ks.DisableKeyVersion(x, &custodyv1.KeyVersionRequest{Name: "enc", Version: 5})
			return err
		}, codes.NotFound},
		{"min version above primary", func() error {
			_, err := ks.SetMinDecryptionVersion(x, &custodyv1.SetMinDecryptionVersionRequest{Name: "enc", Version: 3})
			return err
		}, codes.NotFound},
		{"destroy primary", func() error {
			_, err := ks.ScheduleKeyDestruction(x, &custodyv1.ScheduleKeyDestructionRequest{Name: "enc", Version: 1})
			return err
		}, codes.FailedPrecondition},
		{"destroy negative wait", func() error {
			_, err := ks.ScheduleKeyDestruction(x, &custodyv1.ScheduleKeyDestructionRequest{Name: "enc", Version: 1, WaitingPeriod: durationpb.New(-time.Hour)})
			return err
		}, codes.InvalidArgument},
		{"cancel unscheduled", func() error {
			_, err := ks.CancelKeyDestruction(x, &custodyv1.KeyVersionRequest{Name: "enc", Version: 1})
			return err
		}, codes.FailedPrecondition},
	}
	for _, cs := range cases {
		t.Run(cs.name, func(t *testing.T) {
			err := cs.call()
			wantCode(t, err, cs.want, cs.name)
			if msg := status.Convert(err).Message(); msg == "" || msg == "internal error" {
				t.Fatalf("unhelpful message %q", msg)
			}
		})
	}
	after, err := ks.ListKeys(x, &custodyv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Keys) != len(before.Keys) {
		t.Fatalf("keys changed: %d -> %d", len(before.Keys), len(after.Keys))
	}
	for i := range after.Keys {
		a, b := after.Keys[i], before.Keys[i]
		if a.Name != b.Name || a.PrimaryVersion != b.PrimaryVersion || a.MinDecryptionVersion != b.MinDecryptionVersion || len(a.Versions) != len(b.Versions) || a.Versions[0].State != b.Versions[0].State {
			t.Fatalf("key %s changed: %v -> %v", a.Name, b, a)
		}
	}
}

// TestCallersWithoutRightsAreRefused covers the authentication and
// authorisation denials, and that each denial is audited.
func TestCallersWithoutRightsAreRefused(t *testing.T) {
	e := start(t)
	createAll(t, e)
	x := ctx(t)

	// A valid certificate from this CA whose identity has no role.
	_, err := e.Crypto(t, "stranger").Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("x")})
	wantCode(t, err, codes.PermissionDenied, "no role")
	_, err = e.Keys(t, "stranger").ListKeys(x, &custodyv1.ListKeysRequest{})
	wantCode(t, err, codes.PermissionDenied, "no role listing keys")

	// A relay asking for a key it was not granted (existing or not: same answer).
	r := e.Crypto(t, "relay")
	_, err = r.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "secret", Plaintext: []byte("x")})
	wantCode(t, err, codes.PermissionDenied, "ungranted key")
	_, err2 := r.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "does-not-exist", Plaintext: []byte("x")})
	wantCode(t, err2, codes.PermissionDenied, "unknown key")
	// Relays cannot manage or list keys; operators and officers cannot use them.
	_, err = e.Keys(t, "relay").ListKeys(x, &custodyv1.ListKeysRequest{})
	wantCode(t, err, codes.PermissionDenied, "relay listing keys")
	_, err = e.Keys(t, "relay").CreateKey(x, &custodyv1.CreateKeyRequest{Name: "mine", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM})
	wantCode(t, err, codes.PermissionDenied, "relay creating a key")
	for _, who := range []string{"operator", "officer", "auditor"} {
		_, err = e.Crypto(t, who).Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("x")})
		wantCode(t, err, codes.PermissionDenied, who+" encrypting")
		_, err = e.Crypto(t, who).GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "enc"})
		wantCode(t, err, codes.PermissionDenied, who+" asking for a data key")
	}
	_, err = e.Keys(t, "officer").CreateKey(x, &custodyv1.CreateKeyRequest{Name: "x", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM})
	wantCode(t, err, codes.PermissionDenied, "officer creating a key alone")

	// No client certificate, and a certificate from another CA: the TLS
	// handshake fails, so no RPC is served.
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "localhost", RootCAs: pool(t, e.CAFile)}
	_, err = dialRaw(t, e.Addr, noCert).Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("x")})
	wantCode(t, err, codes.Unavailable, "no client certificate")
	other, err := pki.GenerateDev(filepath.Join(t.TempDir(), "other"), []string{"relay"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(other.Clients["relay"].CertFile, other.Clients["relay"].KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	foreign := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "localhost", RootCAs: pool(t, e.CAFile), Certificates: []tls.Certificate{cert}}
	_, err = dialRaw(t, e.Addr, foreign).Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("x")})
	wantCode(t, err, codes.Unavailable, "certificate from another CA")

	// Every denial that reached the service is on the record.
	var denied int
	if err := e.D.Audit.Read(x, audit.Filter{}, func(r audit.Record) error {
		if r.Outcome == audit.OutcomeDenied {
			denied++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if denied < 12 {
		t.Fatalf("%d denied records, want at least 12", denied)
	}
}

func pool(t *testing.T, caFile string) *x509.CertPool {
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		t.Fatal("no CA certificate")
	}
	return p
}

func dialRaw(t *testing.T, addr string, cfg *tls.Config) custodyv1.CryptoServiceClient {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return custodyv1.NewCryptoServiceClient(conn)
}

// TestKeyTransportOnlyToPinnedRecipients: a relay whose grant pins its
// recipient key gets data keys wrapped to it inside the HSM (and never the
// plaintext); any other recipient key is refused.
func TestKeyTransportOnlyToPinnedRecipients(t *testing.T) {
	relayKey, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&relayKey.PublicKey)
	pin := sha256.Sum256(der)
	e := testenv.Start(t, testenv.Settings{Mutate: func(_ *testenv.Env, c *config.Config) {
		c.Grants = append(c.Grants, config.GrantConfig{Identity: "dev-relay", Keys: []string{"transport"},
			Operations: []config.Operation{config.OpDataKey, config.OpUnwrap}, RecipientKeys: []string{hex.EncodeToString(pin[:])}})
	}})
	e.CreateKey(t, "transport", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	encCtx := map[string]string{"conversation": "7"}
	dk, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "transport", Context: encCtx, RecipientPublicKey: der})
	if err != nil {
		t.Fatal(err)
	}
	if len(dk.Plaintext) != 0 || len(dk.RecipientWrappedKey) == 0 {
		t.Fatalf("plaintext %d bytes, recipient copy %d bytes", len(dk.Plaintext), len(dk.RecipientWrappedKey))
	}
	h := sha256.New()
	if dk.RecipientWrapping == "RSA-OAEP-SHA1" {
		h = sha1.New()
	}
	key1, err := rsa.DecryptOAEP(h, nil, relayKey, dk.RecipientWrappedKey, nil)
	if err != nil || len(key1) != 32 {
		t.Fatalf("relay cannot open its copy (%s): %v", dk.RecipientWrapping, err)
	}
	un, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "transport", WrappedKey: dk.WrappedKey, Context: encCtx, RecipientPublicKey: der})
	if err != nil {
		t.Fatal(err)
	}
	h.Reset()
	key2, err := rsa.DecryptOAEP(h, nil, relayKey, un.RecipientWrappedKey, nil)
	if err != nil || !bytes.Equal(key1, key2) {
		t.Fatalf("unwrap to recipient gives another key: %v", err)
	}
	// Plaintext is not granted; another recipient key is not pinned.
	_, err = c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "transport", WrappedKey: dk.WrappedKey, Context: encCtx})
	wantCode(t, err, codes.PermissionDenied, "plaintext unwrap without allow_plaintext")
	_, err = c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "transport", Context: encCtx})
	wantCode(t, err, codes.PermissionDenied, "plaintext data key without allow_plaintext")
	other, _ := rsa.GenerateKey(rand.Reader, 3072)
	otherDER, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	_, err = c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "transport", WrappedKey: dk.WrappedKey, Context: encCtx, RecipientPublicKey: otherDER})
	wantCode(t, err, codes.PermissionDenied, "unpinned recipient")
	_, err = c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "transport", Context: encCtx, RecipientPublicKey: otherDER})
	wantCode(t, err, codes.PermissionDenied, "unpinned recipient for a new data key")
}

// TestABatchAnswersAndRecordsInItemOrder: each result of a large batch
// with refused items among it stands at its item's place, and the records
// are written in item order, each under its own item's name and outcome.
func TestABatchAnswersAndRecordsInItemOrder(t *testing.T) {
	e := start(t)
	e.CreateKey(t, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	const n = 64
	encCtx := map[string]string{"tenant": "acme"}
	items := make([]*custodyv1.DecryptRequest, n)
	for i := range items {
		ct, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte(fmt.Sprint("item ", i)), Context: encCtx})
		if err != nil {
			t.Fatal(err)
		}
		items[i] = &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext, Context: encCtx}
		if i%3 == 2 {
			items[i].Context = map[string]string{"tenant": "other"} // refused
		}
	}
	bd, err := c.BatchDecrypt(x, &custodyv1.BatchDecryptRequest{Items: items})
	if err != nil || len(bd.Results) != n {
		t.Fatalf("batch decrypt: %v", err)
	}
	for i, r := range bd.Results {
		if i%3 == 2 {
			if e := r.GetError(); e == nil || codes.Code(e.Code) != codes.InvalidArgument {
				t.Errorf("item %d: %v, want InvalidArgument", i, r)
			}
		} else if got := string(r.GetResponse().GetPlaintext()); got != fmt.Sprint("item ", i) {
			t.Errorf("item %d answered %q", i, got)
		}
	}
	var got []audit.Record
	if err := readRecords(e.Config.Audit.Dir, func(r audit.Record) {
		if strings.HasPrefix(r.Method, "BatchDecrypt[") {
			got = append(got, r)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("%d item records, want %d", len(got), n)
	}
	for i, r := range got {
		want := audit.OutcomeOK
		if i%3 == 2 {
			want = audit.OutcomeError
		}
		if r.Method != fmt.Sprintf("BatchDecrypt[%d]", i) || r.Outcome != want || (i > 0 && r.Seq != got[i-1].Seq+1) {
			t.Errorf("record %d: method %s outcome %s seq %d", i, r.Method, r.Outcome, r.Seq)
		}
	}
}
