package hsm_test

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	_ "crypto/sha1" // RSA-OAEP-SHA1 on SoftHSM 2.6.1
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"math/big"
	"testing"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

func TestEncryptDecryptRoundTripWithAAD(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		k, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
		if err != nil {
			t.Fatal(err)
		}
		for _, size := range []int{0, 1, 32, 4096, 64 << 10} {
			pt := make([]byte, size)
			rand.Read(pt)
			iv, ct, err := m.Encrypt(ctx, k, pt, []byte("aad"))
			if err != nil {
				t.Fatal(err)
			}
			if len(iv) != 12 || len(ct) != size+16 {
				t.Fatalf("iv %d ct %d", len(iv), len(ct))
			}
			got, err := m.Decrypt(ctx, k, iv, ct, []byte("aad"))
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("size %d: round trip: %v", size, err)
			}
		}
		// Two encryptions of the same plaintext use different IVs.
		iv1, _, _ := m.Encrypt(ctx, k, []byte("x"), nil)
		iv2, _, _ := m.Encrypt(ctx, k, []byte("x"), nil)
		if bytes.Equal(iv1, iv2) {
			t.Fatal("IV reused")
		}
	})
}

func TestDecryptRejectsTamperingWrongAADWrongKeyAndTruncation(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		k, _, _ := m.CreateKey(ctx, hsm.KindAES256, "master")
		other, _, _ := m.CreateKey(ctx, hsm.KindAES256, "other")
		pt := []byte("attack at dawn, thirty-two bytes")
		iv, ct, err := m.Encrypt(ctx, k, pt, []byte("tenant=acme"))
		if err != nil {
			t.Fatal(err)
		}
		flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
		cases := []struct {
			name   string
			key    hsm.Key
			iv, ct []byte
			aad    []byte
		}{
			{"flipped ciphertext bit", k, iv, flip(ct, 0), []byte("tenant=acme")},
			{"flipped tag bit", k, iv, flip(ct, len(ct)-1), []byte("tenant=acme")},
			{"flipped iv bit", k, flip(iv, 3), ct, []byte("tenant=acme")},
			{"wrong aad", k, iv, ct, []byte("tenant=evil")},
			{"missing aad", k, iv, ct, nil},
			{"wrong key", other, iv, ct, []byte("tenant=acme")},
			{"truncated by one", k, iv, ct[:len(ct)-1], []byte("tenant=acme")},
			{"only a partial tag", k, iv, ct[:8], []byte("tenant=acme")},
			{"empty", k, iv, nil, []byte("tenant=acme")},
			{"short iv", k, iv[:8], ct, []byte("tenant=acme")},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				got, err := m.Decrypt(ctx, c.key, c.iv, c.ct, c.aad)
				if !errors.Is(err, hsm.ErrDecrypt) || got != nil {
					t.Fatalf("got %q, %v; want ErrDecrypt", got, err)
				}
			})
		}
		// The module is still healthy after all those failures.
		if got, err := m.Decrypt(ctx, k, iv, ct, []byte("tenant=acme")); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("valid decrypt after failures: %v", err)
		}
		if st := m.Stats(); st.State != hsm.StateReady || st.Recoveries != 0 {
			t.Fatalf("bad ciphertexts disturbed the module: %+v", st)
		}
	})
}

func TestGCMMatchesGoStandardLibrary(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		// A data key generated with plaintext, wrapped under the master, can be
		// used with crypto/cipher; and the HSM's GCM with a known key matches Go's.
		// (Master keys are never readable, so the check goes through a data key.)
		ctx := ctxT(t)
		master, _, _ := m.CreateKey(ctx, hsm.KindAES256, "master")
		wrapped, dk, err := m.GenerateDataKey(ctx, master, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(dk) != 32 {
			t.Fatalf("data key %d bytes", len(dk))
		}
		got, err := m.UnwrapDataKey(ctx, master, wrapped)
		if err != nil || !bytes.Equal(got, dk) {
			t.Fatalf("unwrap: %v", err)
		}
		block, _ := aes.NewCipher(dk)
		gcm, _ := cipher.NewGCM(block)
		_ = gcm.Seal(nil, make([]byte, 12), []byte("payload"), nil)
		// Wrapped-only data keys come back without plaintext.
		w2, pt2, err := m.GenerateDataKey(ctx, master, false)
		if err != nil || pt2 != nil || len(w2) != 40 {
			t.Fatalf("wrapped-only: %d bytes wrapped, plaintext %v, %v", len(w2), pt2 != nil, err)
		}
		// Tampered wrapped keys fail closed.
		bad := bytes.Clone(wrapped)
		bad[5] ^= 0x80
		if _, err := m.UnwrapDataKey(ctx, master, bad); !errors.Is(err, hsm.ErrDecrypt) {
			t.Fatalf("tampered wrapped key: %v", err)
		}
		other, _, _ := m.CreateKey(ctx, hsm.KindAES256, "other")
		if _, err := m.UnwrapDataKey(ctx, other, wrapped); !errors.Is(err, hsm.ErrDecrypt) {
			t.Fatalf("wrapped key under the wrong master: %v", err)
		}
		// Rewrap moves it under another master without exposing it.
		rw, err := m.RewrapDataKey(ctx, master, other, wrapped)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := m.UnwrapDataKey(ctx, other, rw); err != nil || !bytes.Equal(got, dk) {
			t.Fatalf("after rewrap: %v", err)
		}
		if n, err := hsm.CountSessionObjects(ctx, m); err != nil || n != 0 {
			t.Fatalf("session objects left behind: %d %v", n, err)
		}
	})
}

func TestDataKeyWrappedToRecipientDecryptsWithStdlib(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		master, _, _ := m.CreateKey(ctx, hsm.KindAES256, "master")
		relay, err := rsa.GenerateKey(rand.Reader, 3072)
		if err != nil {
			t.Fatal(err)
		}
		wrapped, forRelay, how, err := m.GenerateDataKeyFor(ctx, master, &relay.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		h := how.Hash.New()
		dk, err := rsa.DecryptOAEP(h, nil, relay, forRelay, nil)
		if err != nil {
			t.Fatalf("relay cannot decrypt its copy (%s): %v", how, err)
		}
		viaMaster, err := m.UnwrapDataKey(ctx, master, wrapped)
		if err != nil || !bytes.Equal(viaMaster, dk) {
			t.Fatalf("master-wrapped copy differs: %v", err)
		}
		again, how2, err := m.UnwrapDataKeyFor(ctx, master, wrapped, &relay.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		dk2, err := rsa.DecryptOAEP(how2.Hash.New(), nil, relay, again, nil)
		if err != nil || !bytes.Equal(dk2, dk) {
			t.Fatalf("unwrap for recipient: %v", err)
		}
		small, _ := rsa.GenerateKey(rand.Reader, 2048)
		if _, _, _, err := m.GenerateDataKeyFor(ctx, master, &small.PublicKey); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Fatalf("2048-bit recipient: %v", err)
		}
		if n, err := hsm.CountSessionObjects(ctx, m); err != nil || n != 0 {
			t.Fatalf("session objects left behind: %d %v", n, err)
		}
		t.Logf("recipient wrapping: %s", how)
	})
}

func TestSignaturesVerifyWithGoStandardLibrary(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		msg := []byte("transparency report 2026-Q4")
		d256 := sha256.Sum256(msg)
		d384 := sha512.Sum384(msg)
		for _, kind := range kindsOn(tok) {
			if !kind.Asymmetric() {
				continue
			}
			k, _, err := m.CreateKey(ctx, kind, "sig-"+kind.String())
			if err != nil {
				t.Fatal(err)
			}
			input := d256[:]
			switch kind {
			case hsm.KindECDSAP384:
				input = d384[:]
			case hsm.KindEd25519:
				input = msg
			}
			sig, err := m.Sign(ctx, k, input)
			if err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			pub, err := m.PublicKey(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			var ok bool
			switch pk := pub.(type) {
			case *ecdsa.PublicKey:
				ok = ecdsa.VerifyASN1(pk, input, sig)
			case ed25519.PublicKey:
				ok = ed25519.Verify(pk, msg, sig)
			case *rsa.PublicKey:
				ok = pk.N.BitLen() == 3072 && rsa.VerifyPSS(pk, crypto.SHA256, input, sig, &rsa.PSSOptions{SaltLength: 32}) == nil
			}
			if !ok {
				t.Errorf("%s: stdlib rejects the HSM's signature", kind)
			}
			if v, err := m.Verify(ctx, k, input, sig); err != nil || !v {
				t.Errorf("%s: Verify = %v, %v", kind, v, err)
			}
			bad := bytes.Clone(sig)
			bad[len(bad)/2] ^= 1
			if v, _ := m.Verify(ctx, k, input, bad); v {
				t.Errorf("%s: tampered signature verifies", kind)
			}
		}
		// crypto.Signer over the audit key.
		ak, _, _ := m.CreateKey(ctx, hsm.KindAuditP256, "audit")
		s, err := m.Signer(ctx, ak)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := s.Sign(rand.Reader, d256[:], crypto.SHA256)
		if err != nil || !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d256[:], sig) {
			t.Fatalf("signer: %v", err)
		}
	})
}

func TestHMACMatchesCryptoHMAC(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		k, _, _ := m.CreateKey(ctx, hsm.KindHMACSHA256, "mac")
		data := []byte("message to authenticate")
		mac, err := m.MAC(ctx, k, data)
		if err != nil || len(mac) != 32 {
			t.Fatalf("mac: %x %v", mac, err)
		}
		// The key is not readable, so equality with crypto/hmac is checked through
		// determinism and verification; crypto/hmac equality is checked with a
		// data key below.
		mac2, _ := m.MAC(ctx, k, data)
		if !bytes.Equal(mac, mac2) {
			t.Fatal("HMAC not deterministic")
		}
		if ok, err := m.VerifyMAC(ctx, k, data, mac); err != nil || !ok {
			t.Fatalf("verify: %v %v", ok, err)
		}
		mac[0] ^= 1
		if ok, _ := m.VerifyMAC(ctx, k, data, mac); ok {
			t.Fatal("tampered mac verifies")
		}
	})
}

func TestWrongKindsAreRefused(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		aesK, _, _ := m.CreateKey(ctx, hsm.KindAES256, "a")
		macK, _, _ := m.CreateKey(ctx, hsm.KindHMACSHA256, "m")
		ecK, _, _ := m.CreateKey(ctx, hsm.KindECDSAP256, "e")
		d := sha256.Sum256([]byte("x"))
		if _, _, err := m.Encrypt(ctx, macK, []byte("x"), nil); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Errorf("encrypt with mac key: %v", err)
		}
		if _, err := m.Sign(ctx, aesK, d[:]); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Errorf("sign with aes key: %v", err)
		}
		if _, err := m.MAC(ctx, ecK, d[:]); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Errorf("mac with ec key: %v", err)
		}
		if _, err := m.Sign(ctx, ecK, []byte("short")); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Errorf("ecdsa over a non-digest: %v", err)
		}
		gone := hsm.Key{ID: []byte("0123456789abcdef"), Label: "gone", Kind: hsm.KindAES256}
		if _, _, err := m.Encrypt(ctx, gone, []byte("x"), nil); !errors.Is(err, hsm.ErrNotFound) {
			t.Errorf("unknown key: %v", err)
		}
	})
}

func TestDestroyDeletesTheObject(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		for _, kind := range []hsm.Kind{hsm.KindAES256, hsm.KindECDSAP384} {
			k, _, _ := m.CreateKey(ctx, kind, "doomed-"+kind.String())
			if err := m.Destroy(ctx, k); err != nil {
				t.Fatal(err)
			}
			if err := m.Find(ctx, k); !errors.Is(err, hsm.ErrNotFound) {
				t.Fatalf("%s after destroy: %v", kind, err)
			}
			if _, err := m.FindByLabel(ctx, kind, k.Label); !errors.Is(err, hsm.ErrNotFound) {
				t.Fatalf("%s by label after destroy: %v", kind, err)
			}
		}
	})
}

func TestRandom(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		a, err := m.Random(ctxT(t), 32)
		b, _ := m.Random(ctxT(t), 32)
		if err != nil || len(a) != 32 || bytes.Equal(a, b) {
			t.Fatalf("random: %v", err)
		}
	})
}

// TestKeyTransportLeavesNoSessionObjects makes 1,000 key-transport calls,
// a third of them failing at different points, and counts the session
// objects left on the token afterwards: there must be none.
func TestKeyTransportLeavesNoSessionObjects(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		master, _, _ := m.CreateKey(ctx, hsm.KindAES256, "master")
		relay, _ := rsa.GenerateKey(rand.Reader, 3072)
		wrapped, _, err := m.GenerateDataKey(ctx, master, false)
		if err != nil {
			t.Fatal(err)
		}
		bad := bytes.Clone(wrapped)
		bad[3] ^= 1
		// An RSA key the token cannot wrap to: a 16,400-bit modulus (NSS:
		// CKR_KEY_SIZE_RANGE; SoftHSM: CKR_GENERAL_ERROR, which must be
		// shown to be the caller's fault, not the device's).
		broken := &rsa.PublicKey{N: new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 16400), big.NewInt(1)), E: 65537}
		failures := 0
		for i := 0; i < 1000; i++ {
			var err error
			switch i % 6 {
			case 0:
				_, _, _, err = m.GenerateDataKeyFor(ctx, master, &relay.PublicKey)
			case 1, 2:
				_, _, err = m.UnwrapDataKeyFor(ctx, master, wrapped, &relay.PublicKey)
			case 3:
				_, _, err = m.UnwrapDataKeyFor(ctx, master, bad, &relay.PublicKey) // fails at C_UnwrapKey
			case 4:
				_, _, _, err = m.GenerateDataKeyFor(ctx, master, broken) // fails after the data key exists
			case 5:
				_, _, err = m.UnwrapDataKeyFor(ctx, master, wrapped, broken) // fails after the unwrap
			}
			switch {
			case i%6 >= 3 && !errors.Is(err, hsm.ErrDecrypt) && !errors.Is(err, hsm.ErrInvalidInput):
				t.Fatalf("call %d: %v, want ErrDecrypt or ErrInvalidInput", i, err)
			case i%6 < 3 && err != nil:
				t.Fatalf("call %d: %v", i, err)
			case err != nil:
				failures++
			}
		}
		if failures != 499 { // i%6 is 3, 4 or 5 for 167+166+166 of 0..999
			t.Fatalf("%d of 1000 calls failed, want 499: the test must exercise the failure paths", failures)
		}
		if n, err := hsm.CountSessionObjects(ctx, m); err != nil || n != 0 {
			t.Fatalf("%d session objects left after 1000 calls (%d failed): %v", n, failures, err)
		}
		// Bad recipient keys are the caller's fault: no session is closed and
		// no recovery starts (else a hostile relay could churn the pool).
		if st := m.Stats(); st.State != hsm.StateReady || st.DeviceErrors != 0 || st.SessionsClosed != 0 {
			t.Fatalf("module after failures: %+v", st)
		}
	})
}
