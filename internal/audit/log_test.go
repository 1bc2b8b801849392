package audit

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

func TestAppendAssignsSequenceAndChainVerifies(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	for i := 1; i <= 10; i++ {
		seq, err := l.Append(context.Background(), sampleRecord(i))
		if err != nil {
			t.Fatal(err)
		}
		if seq != uint64(i) {
			t.Fatalf("seq = %d, want %d", seq, i)
		}
	}
	rep := mustVerify(t, dir, key, nil)
	if rep.Records != 10 || rep.FirstSeq != 1 || rep.LastSeq != 10 {
		t.Fatalf("report = %+v", rep)
	}
	seq, head := l.Head()
	if seq != 10 || !bytes.Equal(head, rep.Head) {
		t.Fatalf("Head() = %d %x, report head %x", seq, head, rep.Head)
	}
	// While open, the segment is preallocated: its records, then zeros.
	seg := segmentFiles(t, dir)[0]
	live, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	end := bytes.IndexByte(live, 0)
	if int64(len(live)) != testOptions().SegmentSize || end <= 0 || bytes.Count(live[:end], []byte("\n")) != 10 ||
		len(bytes.Trim(live[end:], "\x00")) != 0 {
		t.Fatalf("live segment: %d bytes, records end at %d", len(live), end)
	}
	// Closed, it is cut back to JSON lines a SIEM can ingest.
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, seg)
	if fi, err := os.Stat(seg); err != nil || fi.Size() != int64(end) {
		t.Fatalf("closed segment is not cut back to its %d bytes of records: %v %v", end, fi.Size(), err)
	}
	if len(lines) != 10 || !bytes.HasPrefix(lines[0], []byte(`{"v":1,"seq":1,"time":"`)) {
		t.Fatalf("unexpected segment content: %q", lines[0])
	}
}

func TestAppendRejectsOnlyMalformedRecordsNeverContent(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	r := sampleRecord(1)
	r.Outcome = "maybe"
	if _, err := l.Append(context.Background(), r); !errors.Is(err, ErrInvalidRecord) {
		t.Errorf("unknown outcome: err = %v, want ErrInvalidRecord", err)
	}
	if seq, _ := l.Head(); seq != 0 {
		t.Fatalf("a malformed record was written: head %d", seq)
	}
	// What a caller sent never stops its record: content is fitted, not refused.
	long := strings.Repeat("é", maxDetailLen) // 2 bytes a character: a naive cut splits one
	content := map[string]func(*Record){
		"empty method":       func(r *Record) { r.Method = "" },
		"invalid utf-8":      func(r *Record) { r.Identity = "\xff\xfe" },
		"long detail":        func(r *Record) { r.Detail = strings.Repeat("x", maxDetailLen+1) },
		"multi-byte detail":  func(r *Record) { r.Detail = long },
		"2000-byte key name": func(r *Record) { r.Key = strings.Repeat("k", 2000) },
	}
	for name, mutate := range content {
		r := sampleRecord(1)
		mutate(&r)
		if _, err := l.Append(context.Background(), r); err != nil {
			t.Errorf("%s: err = %v, want the record written", name, err)
		}
	}
	var got []Record
	if err := l.Read(context.Background(), Filter{}, func(r Record) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(content) {
		t.Fatalf("%d records on the log, want %d", len(got), len(content))
	}
	for _, r := range got {
		for _, f := range []string{r.Identity, r.Method, r.Key, r.Detail} {
			if !utf8.ValidString(f) || len(f) > maxFieldLen {
				t.Errorf("record %d has an unfitted field %q", r.Seq, f)
			}
		}
		if len(r.Detail) > maxDetailLen {
			t.Errorf("record %d detail is %d bytes", r.Seq, len(r.Detail))
		}
	}
	if _, err := Verify(dir, key.Public(), nil); err != nil {
		t.Fatalf("log with fitted records does not verify: %v", err)
	}
}

func TestFitCutsOnACharacterBoundary(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"short", 10, "short"},
		{"abcdefghij", 6, "abc…"},
		{"ééééé", 7, "éé…"}, // 10 bytes; 7-3=4 → two characters
		{"éééé", 6, "é…"},   // cut would land mid-character at 3 → back to 2
		{"a\xffb", 10, "a\uFFFDb"},
	} {
		if got := Fit(tc.in, tc.max); got != tc.want || !utf8.ValidString(got) || len(got) > tc.max {
			t.Errorf("Fit(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}

func TestAppendOverwritesCallerChainFieldsAndKeepsNanoseconds(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	r := sampleRecord(1)
	r.Seq, r.Hash, r.PrevHash = 99, []byte("forged"), []byte("forged")
	r.Time = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("X", 3600))
	if seq, err := l.Append(context.Background(), r); err != nil || seq != 1 {
		t.Fatalf("Append = %d, %v", seq, err)
	}
	var got Record
	if err := l.Read(context.Background(), Filter{}, func(r Record) error { got = r; return nil }); err != nil {
		t.Fatal(err)
	}
	if got.Seq != 1 || !got.Time.Equal(r.Time) || got.Time.Location() != time.UTC || got.Time.Nanosecond() != 123456789 {
		t.Fatalf("read back %+v", got)
	}
	mustVerify(t, dir, key, nil)
}

func TestReopenContinuesChain(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l, err := Open(context.Background(), dir, key, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 5)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(context.Background(), sampleRecord(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}
	l2 := openLog(t, dir, key, testOptions())
	if cp, ok := l2.LatestCheckpoint(); !ok || cp.Seq != 5 {
		t.Fatalf("Close should leave a final checkpoint at 5, got %+v %v", cp, ok)
	}
	seq, err := l2.Append(context.Background(), sampleRecord(6))
	if err != nil || seq != 6 {
		t.Fatalf("Append after reopen = %d, %v; want 6", seq, err)
	}
	rep := mustVerify(t, dir, key, nil)
	if rep.Records != 6 || rep.LastCheckpoint == nil || rep.LastCheckpoint.Seq != 5 {
		t.Fatalf("report = %+v", rep)
	}
}

func TestConcurrentAppendersAreGroupCommitted(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	opts := testOptions()
	opts.SegmentSize = 64 << 10 // several rotations along the way
	l := openLog(t, dir, key, opts)
	const workers, each = 64, 20
	seqs := make(chan uint64, workers*each)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				seq, err := l.Append(context.Background(), sampleRecord(w*each+i))
				if err != nil {
					t.Error(err)
					return
				}
				seqs <- seq
			}
		}(w)
	}
	wg.Wait()
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seq %d returned twice", s)
		}
		seen[s] = true
	}
	for s := uint64(1); s <= workers*each; s++ {
		if !seen[s] {
			t.Fatalf("seq %d never returned", s)
		}
	}
	rep := mustVerify(t, dir, key, nil)
	if rep.Records != workers*each || rep.Segments < 2 {
		t.Fatalf("report = %+v", rep)
	}
	st := l.Stats()
	if st.Records != workers*each || st.Fsyncs >= st.Records || st.Batches != st.Fsyncs {
		t.Fatalf("no group commit: %+v", st)
	}
	t.Logf("%d records in %d fsyncs", st.Records, st.Fsyncs)
}

func TestRemovedDirectoryFailsClosedAndRecoversWithoutReopen(t *testing.T) {
	parent, key := t.TempDir(), newKey(t)
	dir := filepath.Join(parent, "audit")
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 5)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The operator's storage goes away (unmounted, or removed)...
	moved := filepath.Join(parent, "away")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := l.Append(context.Background(), sampleRecord(i)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Append with directory gone = %v, want ErrUnavailable", err)
		}
	}
	if err := l.Healthy(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Healthy = %v, want ErrUnavailable", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the log recreated its directory on its own: %v", err)
	}
	// ...and comes back with its contents.
	if err := os.Rename(moved, dir); err != nil {
		t.Fatal(err)
	}
	seq, err := l.Append(context.Background(), sampleRecord(6))
	if err != nil || seq != 6 {
		t.Fatalf("Append after recovery = %d, %v; want 6", seq, err)
	}
	if err := l.Healthy(); err != nil {
		t.Fatalf("Healthy after recovery = %v", err)
	}
	appendN(t, l, 4)
	if n := len(segmentFiles(t, dir)); n != 2 {
		t.Fatalf("want the old segment plus a new one, got %d segments", n)
	}
	rep := mustVerify(t, dir, key, nil)
	if rep.Records != 10 || rep.CheckpointsMatched != 1 {
		t.Fatalf("report = %+v", rep)
	}
	if st := l.Stats(); st.Failures != 3 {
		t.Fatalf("Failures = %d, want 3", st.Failures)
	}
}

func TestDirectoryRemovedAndRestoredFromBackupVerifies(t *testing.T) {
	parent, key := t.TempDir(), newKey(t)
	dir := filepath.Join(parent, "audit")
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 5)
	backup := map[string][]byte{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		backup[e.Name()] = b
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(context.Background(), sampleRecord(0)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append with directory removed = %v, want ErrUnavailable", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range backup {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if seq, err := l.Append(context.Background(), sampleRecord(6)); err != nil || seq != 6 {
		t.Fatalf("Append after restore = %d, %v", seq, err)
	}
	if rep := mustVerify(t, dir, key, nil); rep.Records != 6 {
		t.Fatalf("report = %+v", rep)
	}
}

func TestDirectoryRecreatedEmptyIsReportedAsDeletedRecords(t *testing.T) {
	parent, key := t.TempDir(), newKey(t)
	dir := filepath.Join(parent, "audit")
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 5)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(context.Background(), sampleRecord(0)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append = %v, want ErrUnavailable", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if seq, err := l.Append(context.Background(), sampleRecord(6)); err != nil || seq != 6 {
		t.Fatalf("Append after recreate = %d, %v", seq, err)
	}
	// Records 1-5 are lost with the directory; the verifier must say so.
	_, err := Verify(dir, &key.PublicKey, nil)
	wantVerifyError(t, err, KindDeleted, 1)
}

func TestTornTailIsReportedByVerifyAndTruncatedOnOpen(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l, err := Open(context.Background(), dir, key, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 5)
	l.Close(context.Background())
	// A crash in the middle of writing record 6.
	torn := []byte(`{"v":1,"seq":6,"time":"2026-01-0`)
	seg := segmentFiles(t, dir)[0]
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(torn)
	f.Close()

	rep := mustVerify(t, dir, key, nil)
	if len(rep.TornTails) != 1 || rep.TornTails[0].Bytes != int64(len(torn)) || rep.Records != 5 {
		t.Fatalf("torn tail not reported: %+v", rep)
	}
	l2 := openLog(t, dir, key, testOptions())
	if st := l2.Stats(); st.TornBytes != uint64(len(torn)) {
		t.Fatalf("TornBytes = %d, want %d", st.TornBytes, len(torn))
	}
	if seq, err := l2.Append(context.Background(), sampleRecord(6)); err != nil || seq != 6 {
		t.Fatalf("Append after torn tail = %d, %v", seq, err)
	}
	rep = mustVerify(t, dir, key, nil)
	if len(rep.TornTails) != 0 || rep.Records != 6 {
		t.Fatalf("report after reopen = %+v", rep)
	}
}

func TestOpenRefusesLogThatEndsBeforeItsCheckpoint(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l, err := Open(context.Background(), dir, key, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 10)
	l.Close(context.Background()) // final checkpoint at 10
	seg := segmentFiles(t, dir)[0]
	writeLines(t, seg, readLines(t, seg)[:5])
	if _, err := Open(context.Background(), dir, key, testOptions()); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want ErrCorrupt", err)
	}
}

func TestPlantedSecretsNeverReachTheLog(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	const secret = "SECRET-CONVERSATION-7731"
	ec := map[string]string{"conversation": secret}
	r := sampleRecord(1)
	r.ContextDigest = testDigest(ec)
	if bytes.Contains(r.ContextDigest, []byte(secret)) || len(r.ContextDigest) != 32 {
		t.Fatalf("context digest carries the context: %x", r.ContextDigest)
	}
	if _, err := l.Append(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.Close(context.Background())
	ents, _ := os.ReadDir(dir)
	found := false
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if bytes.Contains(b, []byte(secret)) {
			t.Fatalf("%s contains the context in clear", e.Name())
		}
		if bytes.Contains(b, []byte(Digest(r.ContextDigest).String())) {
			found = true
		}
	}
	if !found {
		t.Fatal("context digest not recorded")
	}
}

func TestSecondOpenOfSameDirectoryIsRefused(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l, err := Open(context.Background(), dir, key, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), dir, key, testOptions()); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	l.Close(context.Background())
	l2, err := Open(context.Background(), dir, key, testOptions())
	if err != nil {
		t.Fatalf("Open after Close = %v", err)
	}
	l2.Close(context.Background())
}
