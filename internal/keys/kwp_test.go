package keys

import (
	"bytes"
	"crypto/aes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
)

// This file is a test-only implementation of AES Key Wrap with Padding
// (RFC 5649), used to compute and check the FormatWrappedKey vectors in
// docs/envelope.md. In production the HSM performs RFC 5649, under whichever
// mechanism number is RFC 5649 on that token (package hsm's probe finds it).

var kwpAIV = [4]byte{0xa6, 0x59, 0x59, 0xa6}

var errKWPIntegrity = errors.New("kwp: integrity check failed")

// kwpWrap wraps plaintext p (1..2^32-1 bytes) under kek.
func kwpWrap(kek, p []byte) ([]byte, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(p) == 0 {
		return nil, errors.New("kwp: empty plaintext")
	}
	n := (len(p) + 7) / 8
	var a [8]byte
	copy(a[:4], kwpAIV[:])
	binary.BigEndian.PutUint32(a[4:], uint32(len(p)))
	padded := make([]byte, 8*n)
	copy(padded, p)
	if n == 1 {
		out := make([]byte, 16)
		copy(out, a[:])
		copy(out[8:], padded)
		block.Encrypt(out, out)
		return out, nil
	}
	// RFC 3394 wrapping process W with the alternative initial value.
	r := padded
	var b [16]byte
	for j := 0; j < 6; j++ {
		for i := 0; i < n; i++ {
			copy(b[:8], a[:])
			copy(b[8:], r[8*i:8*i+8])
			block.Encrypt(b[:], b[:])
			t := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(b[:8])^t)
			copy(r[8*i:], b[8:])
		}
	}
	return append(a[:], r...), nil
}

// kwpUnwrap reverses kwpWrap and checks the integrity value and padding.
func kwpUnwrap(kek, c []byte) ([]byte, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(c) < 16 || len(c)%8 != 0 {
		return nil, errKWPIntegrity
	}
	n := len(c)/8 - 1
	var a [8]byte
	var p []byte
	if n == 1 {
		var b [16]byte
		block.Decrypt(b[:], c)
		copy(a[:], b[:8])
		p = append([]byte(nil), b[8:]...)
	} else {
		copy(a[:], c[:8])
		r := append([]byte(nil), c[8:]...)
		var b [16]byte
		for j := 5; j >= 0; j-- {
			for i := n - 1; i >= 0; i-- {
				t := uint64(n*j + i + 1)
				binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(a[:])^t)
				copy(b[8:], r[8*i:8*i+8])
				block.Decrypt(b[:], b[:])
				copy(a[:], b[:8])
				copy(r[8*i:], b[8:])
			}
		}
		p = r
	}
	if !bytes.Equal(a[:4], kwpAIV[:]) {
		return nil, errKWPIntegrity
	}
	mli := int(binary.BigEndian.Uint32(a[4:]))
	if mli <= 8*(n-1) || mli > 8*n {
		return nil, errKWPIntegrity
	}
	for _, x := range p[mli:] {
		if x != 0 {
			return nil, errKWPIntegrity
		}
	}
	return p[:mli], nil
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// TestKWPHelperMatchesRFC5649 checks the test-only KWP against the two
// examples in RFC 5649 section 6, so that the documented wrapped-key vectors
// rest on a known-good implementation.
func TestKWPHelperMatchesRFC5649(t *testing.T) {
	kek := mustHex(t, "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	tests := []struct{ name, key, wrapped string }{
		{"20-byte key", "c37b7e6492584340bed1220780894115" + "5068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
		{"7-byte key", "466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := mustHex(t, tt.key)
			want := mustHex(t, tt.wrapped)
			got, err := kwpWrap(kek, key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("wrap = %x, want %x", got, want)
			}
			back, err := kwpUnwrap(kek, got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, key) {
				t.Fatalf("unwrap = %x, want %x", back, key)
			}
			bad := bytes.Clone(got)
			bad[len(bad)-1] ^= 1
			if _, err := kwpUnwrap(kek, bad); !errors.Is(err, errKWPIntegrity) {
				t.Fatalf("unwrap of corrupted output: err = %v, want integrity failure", err)
			}
		})
	}
}
