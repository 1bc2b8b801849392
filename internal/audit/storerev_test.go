package audit

import (
	"context"
	"encoding/json"
	"slices"
	"sync/atomic"
	"testing"
)

// TestRecordsCarryTheStoreRevisionAndAFallIsARollback: with
// Options.StoreRevision every record carries the store's revision when it
// was written (format 3, covered by the hash), never lower than the
// record before it (a sealed phase that cannot read the store yet reports
// 0); a reopened log reports its last record's; and a record whose
// revision went down — a store put back while the log went on, even with
// the chain recomputed — fails verification as store-rolled-back.
func TestRecordsCarryTheStoreRevisionAndAFallIsARollback(t *testing.T) {
	key := newKey(t)
	dir := t.TempDir()
	var rev atomic.Uint64
	opts := testOptions()
	opts.StoreRevision = rev.Load
	l := openLog(t, dir, key, opts)
	for _, r := range []uint64{7, 9, 0, 12} {
		rev.Store(r)
		appendN(t, l, 1)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	path := segmentFiles(t, dir)[0]
	lines := readLines(t, path)
	var got []uint64
	for _, line := range lines {
		r, err := parseRecord(line)
		if err != nil {
			t.Fatal(err)
		}
		if r.Format != recordFormatStoreRev {
			t.Fatalf("record %d has format %d", r.Seq, r.Format)
		}
		got = append(got, r.StoreRev)
	}
	if want := []uint64{7, 9, 9, 12}; !slices.Equal(got, want) {
		t.Fatalf("store revisions %v, want %v", got, want)
	}
	mustVerify(t, dir, key, nil)
	l2 := openLog(t, dir, key, opts)
	if r := l2.OpenedStoreRevision(); r != 12 {
		t.Fatalf("OpenedStoreRevision = %d, want 12", r)
	}
	l2.Close(context.Background())

	// Root lowers record 4's revision and recomputes its hash (the chain
	// after it would be recomputed the same way).
	r, _ := parseRecord(lines[3])
	r.StoreRev = 5
	r.Hash = computeHash(r)
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	lines[3] = b
	writeLines(t, path, lines)
	_, err = Verify(dir, key.Public(), nil)
	wantVerifyError(t, err, KindStoreRolledBack, 4)
}

// TestARecordWithoutItsStoreRevisionAfterOneWithIsRefused: a chain does not
// go back from format 3 to a format without the store revision (root's
// record appended after the kept ones would otherwise make the log's last
// record carry none, and the start's comparison with the store see 0).
func TestARecordWithoutItsStoreRevisionAfterOneWithIsRefused(t *testing.T) {
	key := newKey(t)
	dir := t.TempDir()
	opts := testOptions()
	opts.StoreRevision = func() uint64 { return 40 }
	l := openLog(t, dir, key, opts)
	appendN(t, l, 3)
	l.Close(context.Background())
	path := segmentFiles(t, dir)[0]
	lines := readLines(t, path)
	r, _ := parseRecord(lines[2])
	r.Format, r.StoreRev = recordFormat, 0
	r.Hash = computeHash(r)
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	lines[2] = b
	writeLines(t, path, lines)
	_, err = Verify(dir, key.Public(), nil)
	wantVerifyError(t, err, KindModified, 3)
}
