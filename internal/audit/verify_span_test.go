package audit

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// checkpointAt returns the fixture's signed checkpoint at seq.
func checkpointAt(t *testing.T, dir string, seq uint64) Checkpoint {
	t.Helper()
	cps, err := ReadCheckpoints(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range cps {
		if cp.Seq == seq {
			return cp
		}
	}
	t.Fatalf("no checkpoint at %d among %d", seq, len(cps))
	return Checkpoint{}
}

// TestVerifyFromReadsOnlyTheMarkAndWhatFollows: what a start checks is the
// anchor's record and everything after it, so that its cost does not grow
// with the log; VerifyUpTo checks the rest. Between them every edit,
// deletion, insertion and re-chaining is found by one or the other, and
// only an in-place edit before the anchor, which keeps the stored hashes,
// is left to VerifyUpTo.
func TestVerifyFromReadsOnlyTheMarkAndWhatFollows(t *testing.T) {
	dir, key, _ := tamperFixture(t)
	mark := checkpointAt(t, dir, 20)
	rep, err := VerifyFrom(dir, &key.PublicKey, &mark)
	if err != nil {
		t.Fatalf("VerifyFrom on an intact log: %v", err)
	}
	if rep.FirstSeq != 20 || rep.LastSeq != 30 || rep.Records != 11 || !rep.AnchorChecked {
		t.Fatalf("VerifyFrom read %d records from %d to %d (anchor checked %v), want 11 from 20 to 30", rep.Records, rep.FirstSeq, rep.LastSeq, rep.AnchorChecked)
	}
	rep, err = VerifyUpTo(context.Background(), dir, &key.PublicKey, &mark)
	if err != nil {
		t.Fatalf("VerifyUpTo on an intact log: %v", err)
	}
	if rep.FirstSeq != 1 || rep.LastSeq != 20 || !rep.AnchorChecked {
		t.Fatalf("VerifyUpTo read %d to %d (anchor checked %v), want 1 to 20", rep.FirstSeq, rep.LastSeq, rep.AnchorChecked)
	}

	seg := segmentFiles(t, dir)[0]
	pristine := readLines(t, seg)
	cases := []struct {
		name     string
		tamper   func(lines [][]byte) [][]byte
		fromErr  bool // VerifyFrom must refuse it
		upToErr  bool // VerifyUpTo must refuse it
		fromKind Kind
	}{
		{"a record before the mark edited, hashes kept", func(lines [][]byte) [][]byte {
			lines[4] = bytes.Replace(lines[4], []byte(`"outcome":"ok"`), []byte(`"outcome":"denied"`), 1)
			return lines
		}, false, true, ""},
		{"a record after the mark edited", func(lines [][]byte) [][]byte {
			lines[24] = bytes.Replace(lines[24], []byte(`"outcome":"ok"`), []byte(`"outcome":"denied"`), 1)
			return lines
		}, true, false, KindModified},
		{"the mark's record edited", func(lines [][]byte) [][]byte {
			lines[19] = bytes.Replace(lines[19], []byte(`"outcome":"ok"`), []byte(`"outcome":"denied"`), 1)
			return lines
		}, true, true, KindModified},
		{"a record before the mark deleted", func(lines [][]byte) [][]byte {
			return append(lines[:3:3], lines[4:]...)
		}, true, true, KindModified},
		{"records before the mark deleted and the rest re-chained", func(lines [][]byte) [][]byte {
			out := append(lines[:3:3], lines[4:]...)
			prev := make([]byte, HashSize)
			for i := range out {
				out[i] = editRecord(t, out[i], func(r *Record) {
					r.Seq, r.PrevHash = uint64(i+1), prev
					r.Hash = computeHash(r)
					prev = r.Hash
				})
			}
			return out
		}, true, true, KindCheckpointMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lines := make([][]byte, len(pristine))
			for i := range pristine {
				lines[i] = append([]byte(nil), pristine[i]...)
			}
			writeLines(t, seg, c.tamper(lines))
			defer writeLines(t, seg, pristine)
			_, ferr := VerifyFrom(dir, &key.PublicKey, &mark)
			_, uerr := VerifyUpTo(context.Background(), dir, &key.PublicKey, &mark)
			if (ferr != nil) != c.fromErr {
				t.Errorf("VerifyFrom: %v, want an error: %v", ferr, c.fromErr)
			}
			if (uerr != nil) != c.upToErr {
				t.Errorf("VerifyUpTo: %v, want an error: %v", uerr, c.upToErr)
			}
			var ve *VerifyError
			if c.fromKind != "" && (!errors.As(ferr, &ve) || ve.Kind != c.fromKind) {
				t.Errorf("VerifyFrom: %v, want kind %s", ferr, c.fromKind)
			}
			if ferr != nil && !errors.Is(ferr, ErrCorrupt) || uerr != nil && !errors.Is(uerr, ErrCorrupt) {
				t.Errorf("errors do not wrap ErrCorrupt: %v / %v", ferr, uerr)
			}
			// Verify, the auditor's full check, finds every one of them.
			if _, err := Verify(dir, &key.PublicKey, &mark); err == nil {
				t.Errorf("Verify passes the tampered log")
			}
		})
	}
}

// TestVerifyUpToReadsNothingAfterTheAnchorOfAnOpenLog: while the log is
// open and writing, VerifyUpTo checks the records up to the anchor and
// ignores what follows, and checkpoints beyond the anchor are not read as
// the log being cut short.
func TestVerifyUpToReadsNothingAfterTheAnchorOfAnOpenLog(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 40)
	mark, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 25)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyUpTo(context.Background(), dir, &key.PublicKey, &mark)
	if err != nil {
		t.Fatalf("VerifyUpTo of an open log: %v", err)
	}
	if rep.LastSeq != 40 || rep.Records != 40 {
		t.Fatalf("read %d records up to %d, want 40 up to 40", rep.Records, rep.LastSeq)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	appendN(t, l, 5000)
	late, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyUpTo(ctx, dir, &key.PublicKey, &late); !errors.Is(err, context.Canceled) {
		t.Fatalf("VerifyUpTo with a cancelled context: %v, want context.Canceled", err)
	}
}

// TestACondemnedLogRefusesEverythingAfter: once the directory is found
// rewritten, nothing more is appended or signed, and health says why.
func TestACondemnedLogRefusesEverythingAfter(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 3)
	why := errors.New("record 2 was edited")
	l.Condemn(why)
	l.Condemn(errors.New("a second cause is ignored"))
	if _, err := l.Append(context.Background(), sampleRecord(9)); !errors.Is(err, ErrUnavailable) || !errors.Is(err, why) {
		t.Fatalf("Append after Condemn: %v", err)
	}
	if _, err := l.AppendBatch(context.Background(), []Record{sampleRecord(1), sampleRecord(2)}); !errors.Is(err, why) {
		t.Fatalf("AppendBatch after Condemn: %v", err)
	}
	if _, err := l.Checkpoint(context.Background()); !errors.Is(err, why) {
		t.Fatalf("Checkpoint after Condemn: %v", err)
	}
	if err := l.Healthy(); !errors.Is(err, why) {
		t.Fatalf("Healthy after Condemn: %v", err)
	}
	if seq, _ := l.Head(); seq != 3 {
		t.Fatalf("head %d after Condemn, want 3: nothing more written", seq)
	}
}

// TestOpenFindsTheHeadBehindAnUnparseableLastLine: a start parses only the
// last complete line of the last segment; when that line is not a record,
// the last line that is becomes the head, and what follows it is cut off as
// never acknowledged.
func TestOpenFindsTheHeadBehindAnUnparseableLastLine(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 7)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	seg := segmentFiles(t, dir)[0]
	writeLines(t, seg, append(readLines(t, seg), []byte(`{"not":"a record"}`)))
	l = openLog(t, dir, key, testOptions())
	if seq, _ := l.Head(); seq != 7 {
		t.Fatalf("head %d after an unparseable last line, want 7", seq)
	}
	appendN(t, l, 1)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rep := mustVerify(t, dir, key, nil); rep.LastSeq != 8 {
		t.Fatalf("log verifies to %d, want 8", rep.LastSeq)
	}
}

// TestSparseFilesDoNotHoldUpAStartOrAVerification: root cannot stall a
// start or `audit verify` with terabytes of holes, after the last
// segment's data or as an extra segment: holes are skipped, not read.
func TestSparseFilesDoNotHoldUpAStartOrAVerification(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 5)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	segs := segmentFiles(t, dir)
	last := segs[len(segs)-1]
	if err := os.Truncate(last, 1<<40); err != nil {
		t.Fatalf("a 1 TiB sparse tail: %v", err)
	}
	extra := filepath.Join(dir, segmentName(0))
	if err := os.WriteFile(extra, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(extra, 1<<40); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Verify(dir, &key.PublicKey, nil)
		if err == nil {
			l, oerr := Open(context.Background(), dir, key, testOptions())
			if oerr == nil {
				_, err = l.Append(context.Background(), sampleRecord(6))
				l.Close(context.Background())
			} else {
				err = oerr
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("verify, then open and append: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a verification or a start is held up by sparse files (still reading after 60 s)")
	}
}
