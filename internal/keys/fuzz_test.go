package keys

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"
)

// FuzzParse checks that Parse never panics, that it refuses only with a
// MalformedError, and that every accepted input is canonical:
// Marshal(Parse(b)) == b.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Parse(b)
		if err != nil {
			var me *MalformedError
			if !errors.As(err, &me) || !errors.Is(err, ErrMalformed) {
				t.Fatalf("Parse refused with %T %v, want *MalformedError", err, err)
			}
			return
		}
		again, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed envelope: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("Marshal(Parse(b)) = %x, want %x", again, b)
		}
		if _, err := e.AAD(map[string]string{"k": "v"}); err != nil {
			t.Fatalf("AAD of a parsed envelope: %v", err)
		}
	})
}

// FuzzContext checks ValidateContext against the limits as specified, and
// that the canonical encoding of every valid context decodes back to exactly
// that context (so no two contexts share an encoding, an AAD or a digest).
func FuzzContext(f *testing.F) {
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string) {
		ctx := map[string]string{k1: v1, k2: v2, k3: v3}
		err := ValidateContext(ctx)
		if want := specValid(ctx); (err == nil) != want {
			t.Fatalf("ValidateContext = %v, spec says valid=%v", err, want)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidContext) {
				t.Fatalf("err = %v, want ErrInvalidContext", err)
			}
			return
		}
		enc, err := CanonicalContext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		back, ok := decodeContext(enc)
		if !ok || !maps.Equal(back, ctx) {
			t.Fatalf("canonical encoding %x decodes to %v, want %v", enc, back, ctx)
		}
		d, err := LegacyContextDigest(ctx)
		if sum := sha256.Sum256(enc); err != nil || !bytes.Equal(d, sum[:]) {
			t.Fatalf("LegacyContextDigest = %x, %v; want SHA-256 of the encoding", d, err)
		}
		aad, err := CiphertextAAD([]byte{1}, 1, ctx)
		if err != nil || !bytes.HasSuffix(aad, enc) {
			t.Fatalf("CiphertextAAD = %x, %v; want it to end with the encoding", aad, err)
		}
	})
}

// specValid restates the documented context limits independently of the
// implementation.
func specValid(ctx map[string]string) bool {
	if len(ctx) > 64 {
		return false
	}
	for k, v := range ctx {
		if len(k) < 1 || len(k) > 128 || len(v) > 1024 || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return false
		}
	}
	return true
}

// decodeContext strictly decodes a canonical context encoding: it refuses
// unsorted or repeated keys and trailing bytes.
func decodeContext(b []byte) (map[string]string, bool) {
	next := func() ([]byte, bool) {
		if len(b) < 4 {
			return nil, false
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(len(b)-4) < uint64(n) {
			return nil, false
		}
		p := b[4 : 4+n]
		b = b[4+n:]
		return p, true
	}
	if len(b) < 4 {
		return nil, false
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	m := map[string]string{}
	prev := ""
	for i := uint32(0); i < n; i++ {
		k, ok1 := next()
		v, ok2 := next()
		if !ok1 || !ok2 || (i > 0 && string(k) <= prev) {
			return nil, false
		}
		prev = string(k)
		m[prev] = string(v)
	}
	return m, len(b) == 0
}

// TestFuzzSeedCorporaAreCheckedIn makes sure the fuzz targets above run on
// real seeds in a normal go test, not on nothing.
func TestFuzzSeedCorporaAreCheckedIn(t *testing.T) {
	for _, name := range []string{"FuzzParse", "FuzzContext"} {
		files, err := os.ReadDir(filepath.Join("testdata", "fuzz", name))
		if err != nil || len(files) < 5 {
			t.Errorf("testdata/fuzz/%s: %d seeds, %v; want at least 5", name, len(files), err)
		}
	}
}
