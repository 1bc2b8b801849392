package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"
	"unicode/utf8"
)

// Sentinel errors returned (wrapped with %w) by this package.
var (
	// ErrUnavailable means the log cannot be written durably; callers must fail closed.
	ErrUnavailable = errors.New("audit: log unavailable")
	// ErrInvalidRecord means a record was refused before being written.
	ErrInvalidRecord = errors.New("audit: invalid record")
	// ErrClosed means the Log has been closed.
	ErrClosed = errors.New("audit: log closed")
	// ErrCorrupt means the files on disk are not a well-formed log.
	ErrCorrupt = errors.New("audit: log corrupt")
	// ErrNoRecords means a checkpoint was requested for an empty log.
	ErrNoRecords = errors.New("audit: no records")
	// ErrNotCovered means Prune was asked to delete records no checkpoint covers.
	ErrNotCovered = errors.New("audit: not covered by a checkpoint")
	// ErrLocked means another Log (in this or another process) has the directory open.
	ErrLocked = errors.New("audit: log directory in use")
	// ErrBadSignature means a signature did not verify.
	ErrBadSignature = errors.New("audit: bad signature")
	// ErrSignerNotReady is what a checkpoint signer returns while it cannot
	// sign yet: a sealed custodyd's HSM audit key before login. Records are
	// written and chained as usual; checkpoints wait, without error
	// reports, until the signer is ready (the first one after covers them).
	ErrSignerNotReady = errors.New("audit: checkpoint signer not ready (vault sealed)")
)

// Outcome is the result of an audited request.
type Outcome string

// Outcomes of an audited request.
const (
	OutcomeOK     Outcome = "ok"
	OutcomeDenied Outcome = "denied"
	OutcomeError  Outcome = "error"
)

// HashSize is the size of record hashes (SHA-256).
const HashSize = sha256.Size

// Limits on record fields, so that one line stays small and bounded.
const (
	maxFieldLen  = 1024
	maxDetailLen = 256
	maxLineLen   = 64 << 10
	recordFormat = 1
)

// Digest is a byte string written as lower-case hex in JSON (hashes, context digests).
type Digest []byte

// MarshalText implements encoding.TextMarshaler.
func (d Digest) MarshalText() ([]byte, error) {
	out := make([]byte, hex.EncodedLen(len(d)))
	hex.Encode(out, d)
	return out, nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Digest) UnmarshalText(b []byte) error {
	out := make([]byte, hex.DecodedLen(len(b)))
	if _, err := hex.Decode(out, b); err != nil {
		return fmt.Errorf("digest: %w", err)
	}
	*d = out
	return nil
}

// String returns the digest in hex.
func (d Digest) String() string { return hex.EncodeToString(d) }

// Record is one audited request. Append fills Seq, PrevHash and Hash (any
// values the caller sets there are ignored) and Time if it is zero.
//
// A Record carries only what it is given: never put plaintext, key material,
// PINs or an encryption context in clear into it; use DigestContext.
type Record struct {
	Format        int       `json:"v"`
	Seq           uint64    `json:"seq"`
	Time          time.Time `json:"time"`
	Identity      string    `json:"identity"`
	Role          string    `json:"role,omitempty"`
	Method        string    `json:"method"`
	Key           string    `json:"key,omitempty"`
	KeyVersion    uint64    `json:"key_version,omitempty"`
	ContextDigest Digest    `json:"context_digest,omitempty"`
	Outcome       Outcome   `json:"outcome"`
	Code          string    `json:"code"`
	CaseRef       string    `json:"case_ref,omitempty"`
	Detail        string    `json:"detail,omitempty"`
	PrevHash      Digest    `json:"prev_hash"`
	Hash          Digest    `json:"hash"`
}

// DigestContext returns the SHA-256 digest of an encryption context in a
// canonical (sorted, length-prefixed, domain-separated) form. It is what a
// Record stores instead of the context. Note that a low-entropy context can be
// confirmed by guessing; the digest hides it from casual readers, not from
// someone who already knows the candidates.
func DigestContext(ec map[string]string) []byte {
	keys := make([]string, 0, len(ec))
	for k := range ec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	h.Write([]byte("custody.audit.context.v1\n"))
	var n [8]byte
	for _, k := range keys {
		binary.BigEndian.PutUint64(n[:], uint64(len(k)))
		h.Write(n[:])
		h.Write([]byte(k))
		binary.BigEndian.PutUint64(n[:], uint64(len(ec[k])))
		h.Write(n[:])
		h.Write([]byte(ec[k]))
	}
	return h.Sum(nil)
}

// canonicalRecord is the byte string hashed for a record: every field but
// Hash, in a fixed order, integers big-endian, strings and bytes prefixed with
// their length. It does not depend on JSON, so re-serialising is harmless.
func canonicalRecord(r *Record) []byte {
	b := make([]byte, 0, 256)
	b = append(b, "custody.audit.record.v1\n"...)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Format))
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Time.UnixNano()))
	for _, s := range []string{r.Identity, r.Role, r.Method, r.Key} {
		b = appendBytes(b, []byte(s))
	}
	b = binary.BigEndian.AppendUint64(b, r.KeyVersion)
	b = appendBytes(b, r.ContextDigest)
	for _, s := range []string{string(r.Outcome), r.Code, r.CaseRef, r.Detail} {
		b = appendBytes(b, []byte(s))
	}
	b = appendBytes(b, r.PrevHash)
	return b
}

func appendBytes(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(v)))
	return append(b, v...)
}

// computeHash returns SHA-256(prev_hash || canonical(record without hash)).
func computeHash(r *Record) []byte {
	h := sha256.New()
	h.Write(r.PrevHash)
	h.Write(canonicalRecord(r))
	return h.Sum(nil)
}

// normalise validates a record handed to Append and puts it in the form that
// survives a JSON round trip unchanged (UTC, no monotonic reading).
func normalise(r *Record, now time.Time) error {
	if r.Time.IsZero() {
		r.Time = now
	}
	r.Time = r.Time.UTC().Round(0)
	if y := r.Time.Year(); y < 1970 || y > 9999 {
		return fmt.Errorf("%w: time out of range", ErrInvalidRecord)
	}
	switch r.Outcome {
	case OutcomeOK, OutcomeDenied, OutcomeError:
	default:
		return fmt.Errorf("%w: outcome must be ok, denied or error", ErrInvalidRecord)
	}
	if r.Method == "" {
		return fmt.Errorf("%w: method is empty", ErrInvalidRecord)
	}
	fields := []struct {
		name, v string
		max     int
	}{
		{"identity", r.Identity, maxFieldLen}, {"role", r.Role, maxFieldLen},
		{"method", r.Method, maxFieldLen}, {"key", r.Key, maxFieldLen},
		{"code", r.Code, maxFieldLen}, {"case_ref", r.CaseRef, maxFieldLen},
		{"detail", r.Detail, maxDetailLen},
	}
	for _, f := range fields {
		if len(f.v) > f.max {
			return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalidRecord, f.name, f.max)
		}
		// JSON would replace invalid UTF-8, changing what was hashed.
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidRecord, f.name)
		}
	}
	if len(r.ContextDigest) > 64 {
		return fmt.Errorf("%w: context_digest longer than 64 bytes", ErrInvalidRecord)
	}
	if len(r.ContextDigest) == 0 {
		r.ContextDigest = nil
	}
	r.Format = recordFormat
	r.Seq, r.PrevHash, r.Hash = 0, nil, nil
	return nil
}
