package audit

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fullRecord sets every field of a Record to a value that is not its zero,
// through reflection, so that a field added to Record is set here without
// anyone remembering to.
func fullRecord(t testing.TB) Record {
	t.Helper()
	r := Record{Time: time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC), Outcome: OutcomeDenied}
	v := reflect.ValueOf(&r).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		if !f.IsZero() {
			continue
		}
		switch f.Kind() {
		case reflect.String:
			f.SetString("<" + v.Type().Field(i).Name + "> é\u2028\"\\\x01")
		case reflect.Int, reflect.Int64:
			f.SetInt(int64(i + 1))
		case reflect.Uint64, reflect.Uint32:
			f.SetUint(uint64(1000 + i))
		case reflect.Slice:
			f.SetBytes(bytes.Repeat([]byte{byte(0xa0 + i)}, 32))
		default:
			t.Fatalf("Record.%s has kind %s: teach appendRecordJSON, appendCanonical and this test about it", v.Type().Field(i).Name, f.Kind())
		}
	}
	r.Format = recordFormatStoreRev // the newest format, whose hash covers every field
	return r
}

func TestEncodeRecordCoversEveryField(t *testing.T) {
	r := fullRecord(t)
	want, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	if got := appendRecordJSON(nil, &r); !bytes.Equal(got, want) {
		t.Fatalf("appendRecordJSON differs from encoding/json (a Record field it does not write?)\n got %s\nwant %s", got, want)
	}
	// Every field but Hash changes the canonical bytes.
	base := appendCanonical(nil, &r)
	v := reflect.ValueOf(&r).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		if name == "Hash" {
			continue
		}
		c := r
		reflect.ValueOf(&c).Elem().Field(i).Set(reflect.Zero(v.Field(i).Type()))
		if bytes.Equal(appendCanonical(nil, &c), base) {
			t.Errorf("Record.%s is not covered by the canonical encoding (so not by the hash)", name)
		}
	}
}

func TestEncodeRecordMatchesEncodingJSON(t *testing.T) {
	for name, mutate := range map[string]func(*Record){
		"sample": func(*Record) {},
		"empty optional": func(r *Record) {
			r.Role, r.Key, r.KeyVersion, r.ContextDigest, r.CaseRef, r.Detail = "", "", 0, nil, "", ""
		},
		"html and controls":   func(r *Record) { r.Detail = "<a href='x'>&amp;</a>\t\n\r\b\f\x00\x1f\x7f" },
		"unicode separators":  func(r *Record) { r.Identity = "a\u2028b\u2029c" },
		"invalid utf-8":       func(r *Record) { r.Key = "a\xffb\xc3" },
		"non-ascii":           func(r *Record) { r.Detail = "日本語 ñ 😀" },
		"zero nanoseconds":    func(r *Record) { r.Time = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) },
		"trailing zero nanos": func(r *Record) { r.Time = time.Date(2026, 1, 2, 3, 4, 5, 120000000, time.UTC) },
		"nil hashes":          func(r *Record) { r.PrevHash, r.Hash = nil, nil },
		"long":                func(r *Record) { r.Detail = strings.Repeat("x\"", 600) },
	} {
		r := sampleRecord(7)
		r.Time = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
		r.Format, r.Seq, r.PrevHash, r.Hash = recordFormat, 42, make([]byte, 32), bytes.Repeat([]byte{0xab}, 32)
		mutate(&r)
		want, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendRecordJSON([]byte("prefix"), &r); !bytes.Equal(got[len("prefix"):], want) {
			t.Errorf("%s:\n got %s\nwant %s", name, got[len("prefix"):], want)
		}
	}
}

// FuzzEncodeRecord holds the hand-written encoder to encoding/json's output,
// and the reused-buffer hash to computeHash, for arbitrary field contents.
func FuzzEncodeRecord(f *testing.F) {
	f.Add("spiffe://x/relay", "relay", "Decrypt", "mail", uint64(3), []byte("digest"), "ok", "OK", "", "", int64(1767225600123456789))
	f.Add("\xff<>&\u2028", "", "", "", uint64(0), []byte(nil), "denied", "PermissionDenied", "case-1", "a\nb\"c", int64(0))
	f.Fuzz(func(t *testing.T, identity, role, method, key string, version uint64, digest []byte, outcome, code, caseRef, detail string, nanos int64) {
		r := Record{Format: recordFormat, Seq: version ^ 0x5555, Time: time.Unix(0, nanos).UTC(), Identity: identity, Role: role,
			Method: method, Key: key, KeyVersion: version, ContextDigest: digest, Outcome: Outcome(outcome), Code: code,
			CaseRef: caseRef, Detail: detail, PrevHash: bytes.Repeat([]byte{1}, 32)}
		want, err := json.Marshal(&r)
		if err != nil {
			return // a time encoding/json refuses (normalise refuses it too)
		}
		if got := appendRecordJSON(nil, &r); !bytes.Equal(got, want) {
			t.Fatalf("\n got %s\nwant %s", got, want)
		}
		var e recordEncoder
		for range 2 { // the second time with a dirty scratch buffer
			if h := e.hash(&r); !bytes.Equal(h[:], computeHash(&r)) {
				t.Fatal("recordEncoder.hash differs from computeHash")
			}
		}
	})
}

func TestEncodingARecordAllocatesNothing(t *testing.T) {
	r := sampleRecord(1)
	if err := normalise(&r, time.Now()); err != nil {
		t.Fatal(err)
	}
	r.PrevHash, r.Hash = make([]byte, 32), make([]byte, 32)
	var e recordEncoder
	buf := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(1000, func() {
		h := e.hash(&r)
		copy(r.Hash, h[:])
		buf = appendRecordJSON(buf[:0], &r)
		buf = append(buf, '\n')
	})
	if allocs != 0 {
		t.Fatalf("encoding a record allocates %.1f times", allocs)
	}
}
