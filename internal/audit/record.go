package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
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
	// OutcomeIntent records a state change about to be made: custodyd writes
	// it, durably, before changing governance state, keys or stored data
	// keys, so no change is ever made off the record. The request's own
	// record (ok, denied or error) follows.
	OutcomeIntent Outcome = "intent"
)

// HashSize is the size of record hashes (SHA-256).
const HashSize = sha256.Size

// Limits on record fields, so that one line stays small and bounded.
const (
	maxFieldLen  = 1024
	maxDetailLen = 256
	maxLineLen   = 64 << 10
	recordFormat = 1
	// recordFormatReplica is a record that names the replica whose chain
	// it is in; its hash covers the name. Logs of format 1 still verify.
	recordFormatReplica = 2
	// recordFormatStoreRev is a record that also carries the metadata
	// store's revision when it was written (Options.StoreRevision); its
	// hash covers both. A chain's store revisions never go down.
	recordFormatStoreRev = 3
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
// PINs or an encryption context in clear into it: a context is recorded
// only as its keyed digest (keys.ContextDigester), computed by the server.
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
	// Replica names the custodyd replica whose chain holds the record
	// (format 2; Options.Replica).
	Replica string `json:"replica,omitempty"`
	// StoreRev is the metadata store's anchor revision when the record was
	// written, never lower than its predecessor's (format 3): a store older
	// than the log's last record is one rolled back.
	StoreRev uint64 `json:"store_rev,omitempty"`
	PrevHash Digest `json:"prev_hash"`
	Hash     Digest `json:"hash"`
}

// truncMark ends a field that Fit had to cut.
const truncMark = "…"

// Fit returns s as valid UTF-8 of at most max bytes: invalid bytes become
// U+FFFD, and a longer string is cut on a character boundary and ends with
// "…". It is how every record field is bounded.
func Fit(s string, max int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= max {
		return s
	}
	cut := max - len(truncMark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + truncMark
}

// canonicalRecord is the byte string hashed for a record: every field but
// Hash, in a fixed order, integers big-endian, strings and bytes prefixed with
// their length. It does not depend on JSON, so re-serialising is harmless.
// (appendCanonical in encode.go writes it.)
func canonicalRecord(r *Record) []byte {
	return appendCanonical(make([]byte, 0, 256), r)
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
	case OutcomeOK, OutcomeDenied, OutcomeError, OutcomeIntent:
	default:
		return fmt.Errorf("%w: outcome must be ok, denied, error or intent", ErrInvalidRecord)
	}
	if r.Method == "" {
		r.Method = "-"
	}
	// Content never makes a record fail: a request is on the record whatever
	// it carried. Over-long fields are cut on a character boundary and marked;
	// invalid UTF-8 (which JSON would silently replace, changing what was
	// hashed) becomes U+FFFD first.
	for _, f := range []struct {
		v   *string
		max int
	}{
		{&r.Identity, maxFieldLen}, {&r.Role, maxFieldLen}, {&r.Method, maxFieldLen}, {&r.Key, maxFieldLen},
		{&r.Code, maxFieldLen}, {&r.CaseRef, maxFieldLen}, {&r.Detail, maxDetailLen}, {&r.Replica, maxFieldLen},
	} {
		*f.v = Fit(*f.v, f.max)
	}
	if len(r.ContextDigest) > 64 {
		return fmt.Errorf("%w: context_digest longer than 64 bytes", ErrInvalidRecord)
	}
	if len(r.ContextDigest) == 0 {
		r.ContextDigest = nil
	}
	r.Format = recordFormat
	if r.Replica != "" {
		r.Format = recordFormatReplica
	}
	r.Seq, r.PrevHash, r.Hash, r.StoreRev = 0, nil, nil, 0 // the writer sets them
	return nil
}
