package keys

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"slices"
	"sync"
	"unicode/utf8"
)

// Limits on an encryption context. They keep the AAD small enough for any
// HSM and the audit digest cheap to compute.
const (
	MaxContextPairs    = 64
	MaxContextKeyLen   = 128
	MaxContextValueLen = 1024
)

// ValidateContext checks an encryption context: at most MaxContextPairs
// pairs, each key 1..MaxContextKeyLen bytes, each value at most
// MaxContextValueLen bytes, keys and values valid UTF-8. A nil or empty
// context is valid. Errors wrap ErrInvalidContext and identify a pair by its
// position in key order, never by its content.
func ValidateContext(ctx map[string]string) error {
	if len(ctx) > MaxContextPairs {
		return fmt.Errorf("%w: %d pairs, at most %d allowed", ErrInvalidContext, len(ctx), MaxContextPairs)
	}
	// Check in map order (no sorting on the request path); only a failure
	// sorts, to name the first bad pair by its position in key order.
	ok := true
	for k, v := range ctx {
		if len(k) == 0 || len(k) > MaxContextKeyLen || len(v) > MaxContextValueLen || !utf8.ValidString(k) || !utf8.ValidString(v) {
			ok = false
			break
		}
	}
	if ok {
		return nil
	}
	for i, k := range sortedKeys(ctx) {
		v := ctx[k]
		switch {
		case len(k) == 0:
			return fmt.Errorf("%w: pair %d: empty key", ErrInvalidContext, i)
		case len(k) > MaxContextKeyLen:
			return fmt.Errorf("%w: pair %d: key is %d bytes, at most %d allowed", ErrInvalidContext, i, len(k), MaxContextKeyLen)
		case !utf8.ValidString(k):
			return fmt.Errorf("%w: pair %d: key is not valid utf-8", ErrInvalidContext, i)
		case len(v) > MaxContextValueLen:
			return fmt.Errorf("%w: pair %d: value is %d bytes, at most %d allowed", ErrInvalidContext, i, len(v), MaxContextValueLen)
		case !utf8.ValidString(v):
			return fmt.Errorf("%w: pair %d: value is not valid utf-8", ErrInvalidContext, i)
		}
	}
	return nil
}

// CanonicalContext returns the canonical encoding of a valid encryption
// context, as it appears at the end of every AAD:
//
//	uint32 n                        number of pairs, big-endian
//	n times, keys in ascending byte order:
//	  uint32 len(key)   key
//	  uint32 len(value) value
//
// A nil and an empty context both encode as four zero bytes. The encoding is
// injective: distinct contexts never share an encoding.
func CanonicalContext(ctx map[string]string) ([]byte, error) {
	if err := ValidateContext(ctx); err != nil {
		return nil, err
	}
	return appendContext(nil, ctx), nil
}

// ContextDigester computes the one digest of an encryption context that
// custodyd records (audit records, stored data key ids): HMAC-SHA256 of
// CanonicalContext under a key derived at start from a non-extractable HSM
// key. Being keyed, the digest cannot be used to confirm a guessed
// low-entropy context offline; an auditor who must match a context asks the
// vault for its digest through an audited call.
type ContextDigester struct {
	key []byte
	// macs recycles HMAC states: Reset restores the keyed state without
	// hashing the key again, so a digest costs only the context's blocks.
	macs sync.Pool
}

// contextDigestDomain separates context digests from every other HMAC.
const contextDigestDomain = "custody.context-digest.v2\n"

// ContextDigestKeyLabel is the input the digest key is derived from with
// the HSM key (HMAC-SHA256(hsm key, label)).
const ContextDigestKeyLabel = "custody.context-digest-key.v1"

// NewContextDigester returns a digester keyed with key (32 bytes).
func NewContextDigester(key []byte) (*ContextDigester, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("%w: context digest key must be 32 bytes", ErrInvalidArgument)
	}
	d := &ContextDigester{key: bytes.Clone(key)}
	d.macs.New = func() any { return hmac.New(sha256.New, d.key) }
	return d, nil
}

// Digest returns the keyed digest of a context that ValidateContext
// accepted. A nil and an empty context have the same digest.
func (d *ContextDigester) Digest(ctx map[string]string) []byte {
	m := d.macs.Get().(hash.Hash)
	m.Reset()
	var buf [256]byte
	b := append(buf[:0], contextDigestDomain...)
	m.Write(appendContext(b, ctx))
	sum := m.Sum(make([]byte, 0, sha256.Size))
	d.macs.Put(m)
	return sum
}

// LegacyContextDigest is the unkeyed SHA-256 of CanonicalContext that
// stored data key records written before keyed digests carry. It is only
// compared with those records, never written.
func LegacyContextDigest(ctx map[string]string) ([]byte, error) {
	enc, err := CanonicalContext(ctx)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(enc)
	return sum[:], nil
}

// appendContext appends the canonical encoding of an already validated
// context to b.
func appendContext(b []byte, ctx map[string]string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(ctx)))
	var small [8]string // most contexts have a pair or two: sort them on the stack
	keys := small[:0]
	for k := range ctx {
		keys = append(keys, k)
	}
	slices.Sort(keys) // Go string comparison is bytewise.
	for _, k := range keys {
		b = appendLPString(b, k)
		b = appendLPString(b, ctx[k])
	}
	return b
}

// appendLPString is appendLP for a string, without converting it.
func appendLPString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// appendLP appends a uint32 big-endian length prefix and then p.
func appendLP(b, p []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
	return append(b, p...)
}

func sortedKeys(ctx map[string]string) []string {
	keys := make([]string, 0, len(ctx))
	for k := range ctx {
		keys = append(keys, k)
	}
	slices.Sort(keys) // Go string comparison is bytewise.
	return keys
}
