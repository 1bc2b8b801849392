package hsm_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

func TestSealedDataKeyOpensOnlyWithItsKeyIVAndAAD(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		k, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
		if err != nil {
			t.Fatal(err)
		}
		other, _, err := m.CreateKey(ctx, hsm.KindAES256, "other")
		if err != nil {
			t.Fatal(err)
		}
		aad := []byte("tenant=acme")
		dk, iv, sealed, err := m.GenerateSealedDataKey(ctx, k, aad)
		if err != nil {
			t.Fatal(err)
		}
		if len(dk) != hsm.DataKeySize || len(iv) != hsm.IVSize || len(sealed) != hsm.DataKeySize+hsm.TagSize {
			t.Fatalf("sizes: key %d, iv %d, sealed %d", len(dk), len(iv), len(sealed))
		}
		if bytes.Contains(sealed, dk) {
			t.Fatal("the sealed key contains the data key in clear")
		}
		got, err := m.OpenSealedDataKey(ctx, k, iv, sealed, aad)
		if err != nil || !bytes.Equal(got, dk) {
			t.Fatalf("open: %v", err)
		}
		dk2, iv2, _, err := m.GenerateSealedDataKey(ctx, k, aad)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(dk, dk2) || bytes.Equal(iv, iv2) {
			t.Fatal("two data keys (or IVs) are equal")
		}
		flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
		for _, tc := range []struct {
			name         string
			key          hsm.Key
			iv, in, aad1 []byte
		}{
			{"other aad", k, iv, sealed, []byte("tenant=evil")},
			{"no aad", k, iv, sealed, nil},
			{"other key", other, iv, sealed, aad},
			{"other iv", k, flip(iv, 0), sealed, aad},
			{"tampered key", k, iv, flip(sealed, 3), aad},
			{"tampered tag", k, iv, flip(sealed, len(sealed)-1), aad},
			{"truncated", k, iv, sealed[:len(sealed)-1], aad},
			{"short iv", k, iv[:8], sealed, aad},
			{"ciphertext of another length", k, iv, append(bytes.Clone(sealed), 0), aad},
		} {
			if _, err := m.OpenSealedDataKey(ctx, tc.key, tc.iv, tc.in, tc.aad1); !errors.Is(err, hsm.ErrDecrypt) {
				t.Errorf("%s: err = %v, want ErrDecrypt", tc.name, err)
			}
		}
		// Bad input is the caller's fault: no session closed, no recovery.
		if st := m.Stats(); st.SessionsClosed != 0 || st.DeviceErrors != 0 || st.State != hsm.StateReady {
			t.Fatalf("bad sealed keys disturbed the module: %+v", st)
		}
		if n, err := hsm.CountSessionObjects(ctx, m); err != nil || n != 0 || m.Stats().SessionObjects != 0 {
			t.Fatalf("sealed data keys left %d session objects (counted %d): %v", n, m.Stats().SessionObjects, err)
		}
		hk, _, err := m.CreateKey(ctx, hsm.KindHMACSHA256, "mac")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := m.GenerateSealedDataKey(ctx, hk, aad); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Fatalf("sealed data key under an HMAC key: %v", err)
		}
	})
}
