// Package secmem keeps small secrets (an HSM PIN, Shamir shares) in memory
// that the Go garbage collector never sees, moves or copies.
//
// Invariants:
//
//   - A Buffer's bytes live in their own anonymous mapping outside the Go
//     heap. Where the system allows it the pages are locked out of swap
//     (mlock) and excluded from core dumps (MADV_DONTDUMP); Locked reports
//     whether the lock was granted.
//   - Destroy zeroes the bytes before the mapping is released; a destroyed
//     Buffer is empty and every later call is harmless.
//
// Code that handles a secret copies it into a Buffer as soon as it exists
// and clears the copy it came from (clear(b)); Go strings are never used for
// secrets, because they cannot be zeroed.
package secmem

import (
	"errors"
	"sync"
)

// ErrTooLarge: a Buffer is for small secrets (at most MaxSize bytes).
var ErrTooLarge = errors.New("secmem: secret too large")

// MaxSize bounds one Buffer; PINs and shares are far smaller.
const MaxSize = 64 << 10

// Buffer is a fixed-size secret in locked memory. It is safe for concurrent
// use only through its methods; the slice Bytes returns must not be kept
// after Destroy.
type Buffer struct {
	mu     sync.Mutex
	mem    []byte // the whole allocation (nil once destroyed)
	n      int    // bytes in use
	locked bool
}

// New returns a zeroed Buffer of size bytes.
func New(size int) (*Buffer, error) {
	if size < 0 || size > MaxSize {
		return nil, ErrTooLarge
	}
	mem, locked, err := alloc(max(size, 1))
	if err != nil {
		return nil, err
	}
	return &Buffer{mem: mem, n: size, locked: locked}, nil
}

// From copies secret into a new Buffer and clears secret.
func From(secret []byte) (*Buffer, error) {
	b, err := New(len(secret))
	if err != nil {
		clear(secret)
		return nil, err
	}
	copy(b.mem, secret)
	clear(secret)
	return b, nil
}

// Bytes returns the secret. The slice aliases the locked memory: never
// append to it, and do not keep it after Destroy.
func (b *Buffer) Bytes() []byte {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mem == nil {
		return nil
	}
	return b.mem[:b.n:b.n]
}

// Len is the size of the secret (0 once destroyed).
func (b *Buffer) Len() int {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mem == nil {
		return 0
	}
	return b.n
}

// Locked reports whether the pages are locked out of swap.
func (b *Buffer) Locked() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.locked
}

// Destroy zeroes the secret and releases its memory. It may be called more
// than once, and on a nil Buffer.
func (b *Buffer) Destroy() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mem == nil {
		return
	}
	clear(b.mem)
	release(b.mem, b.locked)
	b.mem, b.n = nil, 0
}
