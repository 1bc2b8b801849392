package hsm

import (
	"crypto/aes"
	"encoding/binary"
	"fmt"
)

// rfc5649Wrap is AES key wrap with padding (RFC 5649, NIST SP 800-38F KWP)
// in Go. It is only the reference the capability probe compares a token's
// output with: no key in custody ever passes through it.
func rfc5649Wrap(kek, key []byte) ([]byte, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(key) == 0 || uint64(len(key)) > 1<<32-1 {
		return nil, fmt.Errorf("rfc 5649: key length %d out of range", len(key))
	}
	// Alternative initial value: 0xA65959A6 then the key length in bytes.
	var a [8]byte
	binary.BigEndian.PutUint32(a[:4], 0xA65959A6)
	binary.BigEndian.PutUint32(a[4:], uint32(len(key)))
	padded := make([]byte, (len(key)+7)/8*8)
	copy(padded, key)
	var b [16]byte
	if len(padded) == 8 {
		// One 64-bit block: a single AES encryption of AIV || P.
		copy(b[:8], a[:])
		copy(b[8:], padded)
		block.Encrypt(b[:], b[:])
		return append([]byte(nil), b[:]...), nil
	}
	// Otherwise RFC 3394's wrapping process with the alternative IV.
	n := len(padded) / 8
	r := padded
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			copy(b[:8], a[:])
			copy(b[8:], r[(i-1)*8:i*8])
			block.Encrypt(b[:], b[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(b[:8])^t)
			copy(r[(i-1)*8:i*8], b[8:])
		}
	}
	return append(a[:], r...), nil
}
