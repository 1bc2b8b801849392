package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"time"
	"unicode/utf8"
)

// The writer's record encoding: the JSON line and the canonical bytes that
// are hashed, both appended to buffers the writer reuses, without
// reflection and without allocating per record. The JSON is byte for byte
// what encoding/json makes of a Record (TestEncodeRecordMatchesEncodingJSON
// and FuzzEncodeRecord hold it to that), so logs written before and after
// read and verify the same; parseRecord still reads lines with
// encoding/json.
//
// A field added to Record must be added here, to appendCanonical and to
// the tests' field list: TestEncodeRecordCoversEveryField fails until it is.

// appendRecordJSON appends r as one JSON object (no newline).
func appendRecordJSON(b []byte, r *Record) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(r.Format), 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, r.Seq, 10)
	b = append(b, `,"time":"`...)
	b = r.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","identity":`...)
	b = appendJSONString(b, r.Identity)
	if r.Role != "" {
		b = append(b, `,"role":`...)
		b = appendJSONString(b, r.Role)
	}
	b = append(b, `,"method":`...)
	b = appendJSONString(b, r.Method)
	if r.Key != "" {
		b = append(b, `,"key":`...)
		b = appendJSONString(b, r.Key)
	}
	if r.KeyVersion != 0 {
		b = append(b, `,"key_version":`...)
		b = strconv.AppendUint(b, r.KeyVersion, 10)
	}
	if len(r.ContextDigest) != 0 {
		b = append(b, `,"context_digest":`...)
		b = appendJSONHex(b, r.ContextDigest)
	}
	b = append(b, `,"outcome":`...)
	b = appendJSONString(b, string(r.Outcome))
	b = append(b, `,"code":`...)
	b = appendJSONString(b, r.Code)
	if r.CaseRef != "" {
		b = append(b, `,"case_ref":`...)
		b = appendJSONString(b, r.CaseRef)
	}
	if r.Detail != "" {
		b = append(b, `,"detail":`...)
		b = appendJSONString(b, r.Detail)
	}
	if r.Replica != "" {
		b = append(b, `,"replica":`...)
		b = appendJSONString(b, r.Replica)
	}
	if r.StoreRev != 0 {
		b = append(b, `,"store_rev":`...)
		b = strconv.AppendUint(b, r.StoreRev, 10)
	}
	b = append(b, `,"prev_hash":`...)
	b = appendJSONHex(b, r.PrevHash)
	b = append(b, `,"hash":`...)
	b = appendJSONHex(b, r.Hash)
	return append(b, '}')
}

// appendJSONHex appends d as a JSON string of lower-case hex, as encoding/json
// writes a Digest (its MarshalText; a nil digest is "").
func appendJSONHex(b []byte, d Digest) []byte {
	b = append(b, '"')
	b = hex.AppendEncode(b, d)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as encoding/json writes a string: HTML
// characters, control characters, U+2028 and U+2029 escaped, invalid UTF-8
// replaced by U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if jsonSafe(c) {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				// Control characters and <, >, & as \u00XX.
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// jsonSafe reports whether an ASCII byte is written as itself.
func jsonSafe(c byte) bool {
	return c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
}

// appendCanonical appends the canonical encoding of r (see canonicalRecord).
func appendCanonical(b []byte, r *Record) []byte {
	b = append(b, "custody.audit.record.v1\n"...)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Format))
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Time.UnixNano()))
	b = appendString(b, r.Identity)
	b = appendString(b, r.Role)
	b = appendString(b, r.Method)
	b = appendString(b, r.Key)
	b = binary.BigEndian.AppendUint64(b, r.KeyVersion)
	b = appendBytes(b, r.ContextDigest)
	b = appendString(b, string(r.Outcome))
	b = appendString(b, r.Code)
	b = appendString(b, r.CaseRef)
	b = appendString(b, r.Detail)
	if r.Format >= recordFormatReplica {
		b = appendString(b, r.Replica)
	}
	if r.Format >= recordFormatStoreRev {
		b = binary.BigEndian.AppendUint64(b, r.StoreRev)
	}
	return appendBytes(b, r.PrevHash)
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

// recordEncoder chains and encodes records into buffers it keeps between
// batches. It is owned by the log's writer goroutine.
type recordEncoder struct {
	scratch []byte // prev_hash || canonical record, hashed
}

// hash returns SHA-256(prev_hash || canonical(r)), as computeHash does,
// reusing the encoder's scratch buffer.
func (e *recordEncoder) hash(r *Record) [HashSize]byte {
	b := append(e.scratch[:0], r.PrevHash...)
	b = appendCanonical(b, r)
	e.scratch = b
	return sha256.Sum256(b)
}
