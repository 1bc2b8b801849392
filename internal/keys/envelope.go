package keys

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Envelope formats. The format byte is the first byte of every envelope.
const (
	// FormatCiphertext is a payload encrypted with AES-256-GCM inside the
	// HSM under one master key version.
	FormatCiphertext byte = 0x01
	// FormatWrappedKey is a data key wrapped with AES-KWP (RFC 5649) inside
	// the HSM under one master key version, with a binding tag.
	FormatWrappedKey byte = 0x02
	// FormatSealedKey is a 32-byte data key drawn from the HSM's RNG and
	// sealed with AES-256-GCM inside the HSM under one master key version.
	// Opening it needs no HSM key object (see docs/envelope.md).
	FormatSealedKey byte = 0x03
)

// Field sizes. See docs/envelope.md for the byte layout.
const (
	// MaxKeyIDLen is the longest key id an envelope carries; Custody's own
	// key ids are 16 random bytes.
	MaxKeyIDLen = 64
	// IVLen is the GCM nonce length; no other length is accepted.
	IVLen = 12
	// TagLen is the GCM tag length; shorter tags are never accepted.
	TagLen = 16
	// MaxPlaintextLen is the largest payload Encrypt takes, and so the
	// largest ciphertext body of a FormatCiphertext envelope. Larger data is
	// encrypted under a data key.
	MaxPlaintextLen = 64 << 10
	// MinWrappedKeyLen and MaxWrappedKeyLen bound an AES-KWP output (a
	// multiple of 8 bytes) in a FormatWrappedKey envelope: 24 bytes wraps a
	// 9..16 byte key, 40 bytes a 32 byte key.
	MinWrappedKeyLen = 24
	MaxWrappedKeyLen = 1024
	// SealedKeyLen is the length of the data key, and so of the ciphertext
	// body, of a FormatSealedKey envelope (AES-256).
	SealedKeyLen = 32
)

// Domain-separation strings, the first field of each format's AAD.
const (
	domainCiphertext = "custody/v1 ciphertext"
	domainWrappedKey = "custody/v1 wrapped-data-key"
	domainSealedKey  = "custody/v1 sealed-data-key"
)

// Envelope is a parsed ciphertext or wrapped data key.
//
// For FormatCiphertext, Body is the GCM ciphertext without its tag (as long
// as the plaintext, possibly empty) and Tag the 16-byte GCM tag; the HSM's
// output is Body||Tag (see Sealed). FormatSealedKey is the same with a
// SealedKeyLen-byte Body: the sealed data key. For FormatWrappedKey, Body is the AES-KWP
// output and Tag the binding tag: the GCM tag, under the same master key
// version and IV, of an empty plaintext with WrappedKeyAAD as AAD.
type Envelope struct {
	Format  byte
	KeyID   []byte
	Version uint32
	IV      []byte
	Body    []byte
	Tag     []byte
}

// NewCiphertext builds a FormatCiphertext envelope from the output of an
// AES-GCM encryption, sealed = ciphertext||tag. The slices are copied.
func NewCiphertext(keyID []byte, version uint32, iv, sealed []byte) (*Envelope, error) {
	if len(sealed) < TagLen {
		return nil, &MalformedError{Field: "tag", Reason: fmt.Sprintf("sealed output is %d bytes, shorter than the %d byte tag", len(sealed), TagLen)}
	}
	cut := len(sealed) - TagLen
	e := &Envelope{
		Format:  FormatCiphertext,
		KeyID:   bytes.Clone(keyID),
		Version: version,
		IV:      bytes.Clone(iv),
		Body:    bytes.Clone(sealed[:cut]),
		Tag:     bytes.Clone(sealed[cut:]),
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

// NewSealedKey builds a FormatSealedKey envelope from the output of the
// AES-GCM encryption of a data key, sealed = ciphertext||tag. The slices are
// copied.
func NewSealedKey(keyID []byte, version uint32, iv, sealed []byte) (*Envelope, error) {
	e, err := NewCiphertext(keyID, version, iv, sealed)
	if err != nil {
		return nil, err
	}
	e.Format = FormatSealedKey
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

// NewWrappedKey builds a FormatWrappedKey envelope from an AES-KWP output
// and its binding tag. The slices are copied.
func NewWrappedKey(keyID []byte, version uint32, iv, wrapped, tag []byte) (*Envelope, error) {
	e := &Envelope{
		Format:  FormatWrappedKey,
		KeyID:   bytes.Clone(keyID),
		Version: version,
		IV:      bytes.Clone(iv),
		Body:    bytes.Clone(wrapped),
		Tag:     bytes.Clone(tag),
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

// Sealed returns Body||Tag, the input AES-GCM decryption expects for a
// FormatCiphertext or FormatSealedKey envelope.
func (e *Envelope) Sealed() []byte {
	out := make([]byte, 0, len(e.Body)+len(e.Tag))
	return append(append(out, e.Body...), e.Tag...)
}

// Validate checks every field against its format's limits. Errors are
// *MalformedError.
func (e *Envelope) Validate() error {
	if err := validateHeader(e.Format, e.KeyID, e.Version); err != nil {
		return err
	}
	if len(e.IV) != IVLen {
		return &MalformedError{Field: "iv", Reason: fmt.Sprintf("%d bytes, want %d", len(e.IV), IVLen)}
	}
	if err := validateBody(e.Format, len(e.Body)); err != nil {
		return err
	}
	if len(e.Tag) != TagLen {
		return &MalformedError{Field: "tag", Reason: fmt.Sprintf("%d bytes, want %d", len(e.Tag), TagLen)}
	}
	return nil
}

func validateHeader(format byte, keyID []byte, version uint32) error {
	if format != FormatCiphertext && format != FormatWrappedKey && format != FormatSealedKey {
		return &MalformedError{Field: "format", Reason: fmt.Sprintf("unknown format 0x%02x", format)}
	}
	if len(keyID) == 0 || len(keyID) > MaxKeyIDLen {
		return &MalformedError{Field: "key_id", Reason: fmt.Sprintf("%d bytes, want 1..%d", len(keyID), MaxKeyIDLen)}
	}
	if version == 0 {
		return &MalformedError{Field: "version", Reason: "version 0 does not exist; versions start at 1"}
	}
	return nil
}

func validateBody(format byte, n int) error {
	switch format {
	case FormatCiphertext:
		if n > MaxPlaintextLen {
			return &MalformedError{Field: "body", Reason: fmt.Sprintf("ciphertext is %d bytes, at most %d allowed", n, MaxPlaintextLen)}
		}
	case FormatWrappedKey:
		if n < MinWrappedKeyLen || n > MaxWrappedKeyLen || n%8 != 0 {
			return &MalformedError{Field: "body", Reason: fmt.Sprintf("wrapped key is %d bytes, want a multiple of 8 in %d..%d", n, MinWrappedKeyLen, MaxWrappedKeyLen)}
		}
	case FormatSealedKey:
		if n != SealedKeyLen {
			return &MalformedError{Field: "body", Reason: fmt.Sprintf("sealed key is %d bytes, want %d", n, SealedKeyLen)}
		}
	}
	return nil
}

// Marshal returns the wire form of a valid envelope (layout in
// docs/envelope.md). It refuses an envelope that Validate refuses.
func (e *Envelope) Marshal() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	n := 1 + 1 + len(e.KeyID) + 4 + IVLen + len(e.Body) + TagLen
	if e.Format == FormatWrappedKey {
		n += 2
	}
	b := make([]byte, 0, n)
	b = append(b, e.Format, byte(len(e.KeyID)))
	b = append(b, e.KeyID...)
	b = binary.BigEndian.AppendUint32(b, e.Version)
	b = append(b, e.IV...)
	if e.Format == FormatWrappedKey {
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.Body)))
	}
	b = append(b, e.Body...)
	b = append(b, e.Tag...)
	return b, nil
}

// Parse decodes an envelope strictly: it refuses an unknown format, a
// length outside its field's limits, version 0, a truncated envelope and
// trailing bytes, so that Marshal(Parse(b)) == b for every accepted b. The
// returned envelope does not alias b. Errors are *MalformedError.
func Parse(b []byte) (*Envelope, error) {
	r := reader{b: b}
	format, ok := r.byte()
	if !ok {
		return nil, &MalformedError{Field: "length", Reason: "empty envelope"}
	}
	idLen, ok := r.byte()
	if !ok {
		return nil, truncated("key_id")
	}
	keyID, ok := r.next(int(idLen))
	if !ok {
		return nil, truncated("key_id")
	}
	verBytes, ok := r.next(4)
	if !ok {
		return nil, truncated("version")
	}
	version := binary.BigEndian.Uint32(verBytes)
	// Check the header before the rest so that an unknown format is reported
	// as such rather than as a length problem.
	if err := validateHeader(format, keyID, version); err != nil {
		return nil, err
	}
	iv, ok := r.next(IVLen)
	if !ok {
		return nil, truncated("iv")
	}
	var body []byte
	switch format {
	case FormatCiphertext, FormatSealedKey:
		// The ciphertext runs up to the tag, which ends the envelope.
		n := r.remaining() - TagLen
		if n < 0 {
			return nil, truncated("tag")
		}
		if err := validateBody(format, n); err != nil {
			return nil, err
		}
		body, _ = r.next(n)
	case FormatWrappedKey:
		lenBytes, ok := r.next(2)
		if !ok {
			return nil, truncated("body")
		}
		n := int(binary.BigEndian.Uint16(lenBytes))
		if err := validateBody(format, n); err != nil {
			return nil, err
		}
		if body, ok = r.next(n); !ok {
			return nil, truncated("body")
		}
	}
	tag, ok := r.next(TagLen)
	if !ok {
		return nil, truncated("tag")
	}
	if r.remaining() != 0 {
		return nil, &MalformedError{Field: "length", Reason: fmt.Sprintf("%d trailing bytes", r.remaining())}
	}
	e := &Envelope{
		Format:  format,
		KeyID:   bytes.Clone(keyID),
		Version: version,
		IV:      bytes.Clone(iv),
		Body:    bytes.Clone(body),
		Tag:     bytes.Clone(tag),
	}
	if e.Body == nil {
		e.Body = []byte{}
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

func truncated(field string) error {
	return &MalformedError{Field: field, Reason: "envelope truncated"}
}

// reader consumes a byte slice front to back without copying.
type reader struct{ b []byte }

func (r *reader) remaining() int { return len(r.b) }

func (r *reader) byte() (byte, bool) {
	if len(r.b) < 1 {
		return 0, false
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c, true
}

func (r *reader) next(n int) ([]byte, bool) {
	if n < 0 || len(r.b) < n {
		return nil, false
	}
	p := r.b[:n:n]
	r.b = r.b[n:]
	return p, true
}

// CiphertextAAD returns the additional authenticated data for the AES-GCM
// operation behind a FormatCiphertext envelope:
//
//	uint32 len(D) D         D = "custody/v1 ciphertext"
//	byte   0x01             format
//	uint32 len(keyID) keyID
//	uint32 version          big-endian
//	CanonicalContext(ctx)
//
// It refuses an invalid key id, version 0 or an invalid context, so no HSM
// operation can run under an AAD that Parse could not later reproduce.
func CiphertextAAD(keyID []byte, version uint32, ctx map[string]string) ([]byte, error) {
	return buildAAD(FormatCiphertext, keyID, version, nil, ctx)
}

// SealedKeyAAD returns the additional authenticated data for the AES-GCM
// operation behind a FormatSealedKey envelope:
//
//	uint32 len(D) D         D = "custody/v1 sealed-data-key"
//	byte   0x03             format
//	uint32 len(keyID) keyID
//	uint32 version          big-endian
//	CanonicalContext(ctx)
//
// The domain string differs from CiphertextAAD's, so a sealed data key can
// never be opened by Decrypt as a ciphertext, nor a 32-byte ciphertext by
// Unwrap as a data key.
func SealedKeyAAD(keyID []byte, version uint32, ctx map[string]string) ([]byte, error) {
	return buildAAD(FormatSealedKey, keyID, version, nil, ctx)
}

// WrappedKeyAAD returns the additional authenticated data of a
// FormatWrappedKey envelope's binding tag:
//
//	uint32 len(D) D         D = "custody/v1 wrapped-data-key"
//	byte   0x02             format
//	uint32 len(keyID) keyID
//	uint32 version          big-endian
//	uint32 len(wrapped) wrapped
//	CanonicalContext(ctx)
//
// The wrapped key itself is part of the AAD: without it the tag would bind
// only (key id, version, context), and a wrapped key could be moved from an
// envelope under one context into an envelope under another.
func WrappedKeyAAD(keyID []byte, version uint32, wrapped []byte, ctx map[string]string) ([]byte, error) {
	if err := validateBody(FormatWrappedKey, len(wrapped)); err != nil {
		return nil, err
	}
	return buildAAD(FormatWrappedKey, keyID, version, wrapped, ctx)
}

// AAD returns the additional authenticated data for e under ctx:
// CiphertextAAD for FormatCiphertext and SealedKeyAAD for FormatSealedKey
// (Body and Tag are ignored, so it can be called before encrypting) and
// WrappedKeyAAD for FormatWrappedKey (Body must already hold the wrapped key).
func (e *Envelope) AAD(ctx map[string]string) ([]byte, error) {
	switch e.Format {
	case FormatCiphertext:
		return CiphertextAAD(e.KeyID, e.Version, ctx)
	case FormatWrappedKey:
		return WrappedKeyAAD(e.KeyID, e.Version, e.Body, ctx)
	case FormatSealedKey:
		return SealedKeyAAD(e.KeyID, e.Version, ctx)
	}
	return nil, &MalformedError{Field: "format", Reason: fmt.Sprintf("unknown format 0x%02x", e.Format)}
}

func buildAAD(format byte, keyID []byte, version uint32, wrapped []byte, ctx map[string]string) ([]byte, error) {
	if err := validateHeader(format, keyID, version); err != nil {
		return nil, err
	}
	if err := ValidateContext(ctx); err != nil {
		return nil, err
	}
	domain := domainCiphertext
	switch format {
	case FormatWrappedKey:
		domain = domainWrappedKey
	case FormatSealedKey:
		domain = domainSealedKey
	}
	b := appendLP(nil, []byte(domain))
	b = append(b, format)
	b = appendLP(b, keyID)
	b = binary.BigEndian.AppendUint32(b, version)
	if format == FormatWrappedKey {
		b = appendLP(b, wrapped)
	}
	return appendContext(b, ctx), nil
}
