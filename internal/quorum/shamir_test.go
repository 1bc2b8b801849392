package quorum

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

// subsets calls f with every subset of shares of size k.
func subsets(shares []Share, k int, f func([]Share)) {
	var rec func(start int, cur []Share)
	rec = func(start int, cur []Share) {
		if len(cur) == k {
			f(append([]Share(nil), cur...))
			return
		}
		for i := start; i < len(shares); i++ {
			rec(i+1, append(cur, shares[i]))
		}
	}
	rec(0, nil)
}

func TestShamirAnyMSharesRecoverTheSecret(t *testing.T) {
	for _, c := range []struct{ n, m int }{{2, 2}, {3, 2}, {5, 3}, {6, 6}} {
		secret := make([]byte, 32)
		rand.Read(secret)
		shares, err := Split(secret, c.n, c.m)
		if err != nil {
			t.Fatal(err)
		}
		for k := c.m; k <= c.n; k++ {
			subsets(shares, k, func(s []Share) {
				got, err := Combine(s)
				if err != nil {
					t.Fatalf("n=%d m=%d: Combine: %v", c.n, c.m, err)
				}
				if !bytes.Equal(got, secret) {
					t.Fatalf("n=%d m=%d k=%d: wrong secret", c.n, c.m, k)
				}
			})
		}
	}
}

func TestShamirFewerThanMSharesDoNotRecoverTheSecret(t *testing.T) {
	secret := []byte("correct horse battery staple pin")
	shares, err := Split(secret, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	subsets(shares, 2, func(s []Share) {
		got, err := Combine(s)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, secret) {
			t.Fatal("two of a 3-of-5 split recovered the secret")
		}
		// Not even most of it: a byte matches with probability 1/256.
		same := 0
		for i := range got {
			if got[i] == secret[i] {
				same++
			}
		}
		if same > 6 {
			t.Fatalf("%d of %d bytes recovered from too few shares", same, len(secret))
		}
	})
	for _, sh := range shares {
		if bytes.Contains(sh[1:], secret[:8]) {
			t.Fatal("share contains the secret in the clear")
		}
	}
}

func TestShamirRefusesBadInput(t *testing.T) {
	shares, _ := Split([]byte("secret"), 3, 2)
	tests := []struct {
		name string
		run  func() error
	}{
		{"m of 1", func() error { _, err := Split([]byte("s"), 3, 1); return err }},
		{"m above n", func() error { _, err := Split([]byte("s"), 2, 3); return err }},
		{"n above 255", func() error { _, err := Split([]byte("s"), 256, 2); return err }},
		{"empty secret", func() error { _, err := Split(nil, 3, 2); return err }},
		{"one share", func() error { _, err := Combine(shares[:1]); return err }},
		{"repeated share", func() error { _, err := Combine([]Share{shares[0], shares[0]}); return err }},
		{"zero x", func() error {
			z := append(Share{0}, shares[1][1:]...)
			_, err := Combine([]Share{shares[0], z})
			return err
		}},
		{"length mismatch", func() error { _, err := Combine([]Share{shares[0], shares[1][:3]}); return err }},
	}
	for _, tt := range tests {
		if err := tt.run(); !errors.Is(err, ErrInvalidShares) {
			t.Errorf("%s: err = %v, want ErrInvalidShares", tt.name, err)
		}
	}
}

func TestGF256InverseAndMultiplication(t *testing.T) {
	for a := 1; a < 256; a++ {
		if got := gfMul(byte(a), gfInv(byte(a))); got != 1 {
			t.Fatalf("%#x * inv = %#x", a, got)
		}
	}
	// Known AES-field product: 0x57 * 0x83 = 0xc1 (FIPS-197 §4.2).
	if got := gfMul(0x57, 0x83); got != 0xc1 {
		t.Fatalf("0x57*0x83 = %#x, want 0xc1", got)
	}
}
