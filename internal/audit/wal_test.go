package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// crashCopy copies the files of a log directory as they are now, while the
// Log still has it open: what a crash (SIGKILL, power cut after the flush)
// leaves on disk, including the active segment's preallocated tail.
func crashCopy(t *testing.T, dir string) string {
	t.Helper()
	out := t.TempDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestZeroTailAfterCrashIsTheEndOfTheLogNotDamage(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 7)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	crashed := crashCopy(t, dir)
	seg := segmentFiles(t, crashed)[0]
	before, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(before)) != testOptions().SegmentSize || before[len(before)-1] != 0 {
		t.Fatalf("the live segment is not preallocated: %d bytes", len(before))
	}

	rep := mustVerify(t, crashed, key, nil)
	if rep.Records != 7 || len(rep.TornTails) != 0 || rep.CheckpointsMatched != 1 {
		t.Fatalf("report on a crashed log with a zero tail = %+v", rep)
	}
	l2 := openLog(t, crashed, key, testOptions())
	if st := l2.Stats(); st.TornBytes != 0 {
		t.Fatalf("TornBytes = %d: a zero tail was taken for a torn write", st.TornBytes)
	}
	if seq, err := l2.Append(context.Background(), sampleRecord(8)); err != nil || seq != 8 {
		t.Fatalf("Append after the crash = %d, %v; want 8", seq, err)
	}
	// The record went where the zeros began, not after them.
	after, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	end := bytes.IndexByte(before, 0)
	if !bytes.Equal(after[:end], before[:end]) || bytes.Count(after[:bytes.IndexByte(after, 0)], []byte("\n")) != 8 {
		t.Fatal("the record after the crash was not written at the end of the records")
	}
	if rep := mustVerify(t, crashed, key, nil); rep.Records != 8 || len(rep.TornTails) != 0 {
		t.Fatalf("report after reopen = %+v", rep)
	}
}

// A batch that was being written when the machine lost power may reach the
// disk in any order of blocks: its later part can be there with zeros in
// front of it. It was never acknowledged (not flushed), so it is a torn tail.
func TestTornBatchBehindZerosIsReportedAndCutOnOpen(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 5)
	crashed := crashCopy(t, dir)
	seg := segmentFiles(t, crashed)[0]
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	end := bytes.IndexByte(b, 0)
	// A complete, valid-looking record line 4 KiB into the zeros.
	line := append(appendRecordJSON(nil, &Record{Format: recordFormat, Seq: 7, Identity: "x", Method: "m", Outcome: OutcomeOK,
		Code: "OK", PrevHash: make([]byte, 32), Hash: make([]byte, 32)}), '\n')
	at := end + 4096
	copy(b[at:], line)
	if err := os.WriteFile(seg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	torn := int64(at + len(line) - end)

	rep := mustVerify(t, crashed, key, nil)
	if rep.Records != 5 || len(rep.TornTails) != 1 || rep.TornTails[0].Bytes != torn {
		t.Fatalf("torn batch behind zeros: report %+v, want %d torn bytes", rep, torn)
	}
	l2 := openLog(t, crashed, key, testOptions())
	if st := l2.Stats(); st.TornBytes != uint64(torn) {
		t.Fatalf("TornBytes = %d, want %d", st.TornBytes, torn)
	}
	if seq, err := l2.Append(context.Background(), sampleRecord(6)); err != nil || seq != 6 {
		t.Fatalf("Append after the torn batch = %d, %v; want 6", seq, err)
	}
	if rep := mustVerify(t, crashed, key, nil); rep.Records != 6 || len(rep.TornTails) != 0 {
		t.Fatalf("report after reopen = %+v", rep)
	}
}

// A crash right after a rotation leaves a new segment that is all zeros.
func TestPreallocatedSegmentWithoutRecordsIsReusedAfterCrash(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	opts := testOptions()
	opts.SegmentSize = 4 << 10
	l := openLog(t, dir, key, opts)
	for len(segmentFiles(t, dir)) < 2 {
		appendN(t, l, 1)
	}
	seq, _ := l.Head()
	crashed := crashCopy(t, dir)
	// Take the records of the newest segment away: it is as the rotation
	// left it, preallocated and never written.
	segs := segmentFiles(t, crashed)
	last := segs[len(segs)-1]
	fi, err := os.Stat(last)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(last, make([]byte, fi.Size()), 0o600); err != nil {
		t.Fatal(err)
	}
	l2 := openLog(t, crashed, key, opts)
	got, err := l2.Append(context.Background(), sampleRecord(0))
	if err != nil {
		t.Fatalf("Append after a crash that left an empty preallocated segment: %v", err)
	}
	if got != seq { // the newest segment's one record was lost with it; its sequence is reused
		t.Fatalf("Append = %d, want %d", got, seq)
	}
	if rep := mustVerify(t, crashed, key, nil); rep.Records != seq || len(rep.TornTails) != 0 {
		t.Fatalf("report = %+v", rep)
	}
}

func TestRotatedSegmentsAreCutBackToTheirRecords(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	opts := testOptions()
	opts.SegmentSize = 4 << 10
	l := openLog(t, dir, key, opts)
	appendN(t, l, 60)
	segs := segmentFiles(t, dir)
	if len(segs) < 3 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	for i, s := range segs {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		z := bytes.IndexByte(b, 0)
		switch {
		case i < len(segs)-1 && (z >= 0 || !bytes.HasSuffix(b, []byte("}\n"))):
			t.Errorf("finished segment %s keeps a zero tail or ends mid-line (%d bytes, NUL at %d)", filepath.Base(s), len(b), z)
		case i == len(segs)-1 && int64(len(b)) < opts.SegmentSize:
			t.Errorf("active segment %s is not preallocated (%d bytes)", filepath.Base(s), len(b))
		}
	}
	if rep := mustVerify(t, dir, key, nil); rep.Records != 60 || rep.Segments != len(segs) {
		t.Fatalf("report = %+v", rep)
	}
}

// Readers of a live log (Read, Follow) stop at the zero tail rather than
// read through it or call it corruption.
func TestReadAndFollowOfTheLiveSegmentStopAtTheZeroTail(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 3)
	n := 0
	if err := l.Read(context.Background(), Filter{}, func(Record) error { n++; return nil }); err != nil || n != 3 {
		t.Fatalf("Read = %d records, %v", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan uint64, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = l.Follow(ctx, Filter{}, func(r Record) error { got <- r.Seq; return nil })
	})
	appendN(t, l, 2)
	for want := uint64(1); want <= 5; want++ {
		select {
		case s := <-got:
			if s != want {
				t.Fatalf("Follow delivered %d, want %d", s, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("Follow did not deliver record %d", want)
		}
	}
	cancel()
	wg.Wait()
}

func TestAppendBatchWritesConsecutiveRecordsInOneCommit(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 2)
	recs := make([]Record, 50)
	for i := range recs {
		recs[i] = sampleRecord(i)
		recs[i].Method = "BatchDecrypt[" + string(rune('0'+i%10)) + "]"
	}
	before := l.Stats()
	first, err := l.AppendBatch(context.Background(), recs)
	if err != nil || first != 3 {
		t.Fatalf("AppendBatch = %d, %v; want 3", first, err)
	}
	st := l.Stats()
	if st.Records-before.Records != 50 || st.Batches-before.Batches != 1 {
		t.Fatalf("50 records in %d commits (%+v)", st.Batches-before.Batches, st)
	}
	if recs[0].Seq != 0 || recs[0].Hash != nil {
		t.Fatal("AppendBatch changed the caller's records")
	}
	var got []Record
	if err := l.Read(context.Background(), Filter{AfterSeq: 2}, func(r Record) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 50 || got[0].Seq != 3 || got[49].Seq != 52 || got[7].Method != recs[7].Method {
		t.Fatalf("read back %d records", len(got))
	}
	bad := []Record{sampleRecord(1), {Outcome: "maybe"}}
	if _, err := l.AppendBatch(context.Background(), bad); err == nil {
		t.Fatal("a batch with an invalid record was accepted")
	}
	if seq, _ := l.Head(); seq != 52 {
		t.Fatalf("an invalid batch wrote records: head %d", seq)
	}
	mustVerify(t, dir, key, nil)
}

// Records are encoded into reused buffers: a batch of 100 records costs the
// same few allocations as a batch of one.
func TestAppendAllocationsDoNotGrowWithRecords(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	one, hundred := []Record{sampleRecord(1)}, make([]Record, 100)
	for i := range hundred {
		hundred[i] = sampleRecord(1)
	}
	ctx := context.Background()
	a1 := testing.AllocsPerRun(50, func() {
		if _, err := l.AppendBatch(ctx, one); err != nil {
			t.Fatal(err)
		}
	})
	a100 := testing.AllocsPerRun(50, func() {
		if _, err := l.AppendBatch(ctx, hundred); err != nil {
			t.Fatal(err)
		}
	})
	single := testing.AllocsPerRun(200, func() {
		if _, err := l.Append(ctx, one[0]); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("allocations: AppendBatch of 1: %.1f, of 100: %.1f; Append: %.1f", a1, a100, single)
	if a100 > a1+2 {
		t.Fatalf("a batch of 100 records allocates %.1f times, one of 1 record %.1f: allocation per record", a100, a1)
	}
	if single > 6 {
		t.Fatalf("Append allocates %.1f times per record", single)
	}
}

// A log written before preallocation (segments that grow, lines from
// encoding/json) opens, continues and verifies: the format did not change.
func TestLogWrittenWithoutPreallocationContinuesAndVerifies(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	var b []byte
	prev := make([]byte, HashSize)
	for i := 1; i <= 5; i++ {
		r := sampleRecord(i)
		if err := normalise(&r, time.Now()); err != nil {
			t.Fatal(err)
		}
		r.Seq, r.PrevHash = uint64(i), prev
		r.Hash = computeHash(&r)
		line, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		b = append(append(b, line...), '\n')
		prev = r.Hash
	}
	seg := segPath(dir, 1)
	if err := os.WriteFile(seg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, dir, key, nil)
	l := openLog(t, dir, key, testOptions())
	if seq, err := l.Append(context.Background(), sampleRecord(6)); err != nil || seq != 6 {
		t.Fatalf("Append to an old segment = %d, %v", seq, err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(after, b) || bytes.Count(after, []byte("\n")) != 6 || bytes.IndexByte(after, 0) >= 0 {
		t.Fatalf("old segment after one more record and Close: %d bytes", len(after))
	}
	if rep := mustVerify(t, dir, key, nil); rep.Records != 6 {
		t.Fatalf("report = %+v", rep)
	}
}
