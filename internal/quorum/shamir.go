package quorum

import (
	"crypto/rand"
	"fmt"
)

// Share is one Shamir share: the x coordinate (1..255) followed by one
// y byte per secret byte.
type Share []byte

// Split divides secret into n shares such that any m of them recover it
// with Combine and any m-1 reveal nothing about it (each byte is a random
// polynomial of degree m-1 over GF(256) whose constant term is the secret
// byte). 2 <= m <= n <= 255.
func Split(secret []byte, n, m int) ([]Share, error) {
	switch {
	case len(secret) == 0:
		return nil, fmt.Errorf("%w: empty secret", ErrInvalidShares)
	case m < 2 || m > n || n > 255:
		return nil, fmt.Errorf("%w: need 2 <= m <= n <= 255, got m=%d n=%d", ErrInvalidShares, m, n)
	}
	shares := make([]Share, n)
	for i := range shares {
		shares[i] = make(Share, 1+len(secret))
		shares[i][0] = byte(i + 1)
	}
	coef := make([]byte, m)
	defer clear(coef)
	for j, s := range secret {
		coef[0] = s
		if _, err := rand.Read(coef[1:]); err != nil {
			return nil, err
		}
		for _, sh := range shares {
			sh[1+j] = evalPoly(coef, sh[0])
		}
	}
	return shares, nil
}

// Combine recovers the secret from shares by Lagrange interpolation at 0.
// Given fewer shares than the m used to Split, it returns a wrong secret
// without error: Shamir shares carry no check, so the caller must verify the
// result (for a PIN, by logging in).
func Combine(shares []Share) ([]byte, error) {
	if len(shares) < 2 {
		return nil, fmt.Errorf("%w: need at least 2 shares", ErrInvalidShares)
	}
	size := len(shares[0])
	seen := map[byte]bool{}
	for i, sh := range shares {
		if len(sh) < 2 || len(sh) != size {
			return nil, fmt.Errorf("%w: share %d has the wrong length", ErrInvalidShares, i)
		}
		if sh[0] == 0 || seen[sh[0]] {
			return nil, fmt.Errorf("%w: share %d has a zero or repeated x", ErrInvalidShares, i)
		}
		seen[sh[0]] = true
	}
	secret := make([]byte, size-1)
	for i, si := range shares {
		// basis_i(0) = prod_{j != i} x_j / (x_j - x_i); subtraction is XOR.
		num, den := byte(1), byte(1)
		for j, sj := range shares {
			if i != j {
				num = gfMul(num, sj[0])
				den = gfMul(den, sj[0]^si[0])
			}
		}
		basis := gfMul(num, gfInv(den))
		for k := range secret {
			secret[k] ^= gfMul(si[1+k], basis)
		}
	}
	return secret, nil
}

// evalPoly evaluates the polynomial with coefficients coef (constant first)
// at x by Horner's rule.
func evalPoly(coef []byte, x byte) byte {
	var y byte
	for i := len(coef) - 1; i >= 0; i-- {
		y = gfMul(y, x) ^ coef[i]
	}
	return y
}

// gfMul multiplies in GF(2^8) modulo x^8+x^4+x^3+x+1 (the AES field) without
// secret-dependent branches or table lookups, so timing does not depend on
// share bytes.
func gfMul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= -(b & 1) & a
		carry := -(a >> 7)
		a = a<<1 ^ 0x1b&carry
		b >>= 1
	}
	return p
}

// gfInv returns a^254 = a^-1 (and 0 for 0), by a fixed chain of
// multiplications.
func gfInv(a byte) byte {
	// 254 = 0b11111110
	r := byte(1)
	sq := a
	for i := range 8 {
		if i > 0 {
			r = gfMul(r, sq)
		}
		sq = gfMul(sq, sq)
	}
	return r
}
