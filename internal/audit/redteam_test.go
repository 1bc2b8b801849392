package audit

// Red-team tests of the split audit check (commit 53352e9): a start runs
// VerifyFrom (the mark's record and what follows) and custodyd then runs
// VerifyUpTo (the records up to the mark) in the background. The attacker is
// root on the host: every file of the audit directory is theirs, the signing
// key and the token's mark are not. Between them the two walks must cover
// what Verify covers, and the background walk must finish.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// rtEdit turns record seq (line seq of the fixture's only segment) from ok
// to denied in place, keeping its stored hashes.
func rtEdit(t *testing.T, lines [][]byte, seq int) {
	t.Helper()
	i := seq - 1
	e := bytes.Replace(lines[i], []byte(`"outcome":"ok"`), []byte(`"outcome":"denied"`), 1)
	if bytes.Equal(e, lines[i]) {
		t.Fatalf("record %d has no ok outcome to edit", seq)
	}
	lines[i] = e
}

// rtVerifyWithin runs VerifyUpTo (as custodyd's background check does, with
// a context that is never cancelled while it serves) and waits at most d
// for it to end.
func rtVerifyWithin(t *testing.T, d time.Duration, dir string, key any, mark *Checkpoint) (err error, finished bool) {
	t.Helper()
	pub := key
	done := make(chan error, 1)
	go func() {
		_, err := VerifyUpTo(context.Background(), dir, pub, mark)
		done <- err
	}()
	select {
	case err := <-done:
		return err, true
	case <-time.After(d):
		return nil, false
	}
}

// TestRedteamSparseSegmentStallsThePrefixCheck: root edits a record before
// the mark and adds an extra segment file named for record 0, sparse, 1 TiB
// of holes (no disk used). VerifyFrom never opens it (the mark's segment
// comes later), so the start passes. VerifyUpTo opens it first: it holds no
// line, and the scan for a torn tail after its data (writtenEnd) reads the
// whole TiB of zeros, with no context check, before the edited record is
// reached. On a file system with larger files (xfs, btrfs, tmpfs: 8 EiB)
// the background check never ends: custodyd serves and signs over the
// edited log, and a SIGTERM waits on it forever. The defence holds if the
// background check finds the edit promptly.
func TestRedteamSparseSegmentStallsThePrefixCheck(t *testing.T) {
	dir, key, _ := tamperFixture(t)
	mark := checkpointAt(t, dir, 20)
	seg := segmentFiles(t, dir)[0]
	lines := readLines(t, seg)
	rtEdit(t, lines, 5)
	writeLines(t, seg, lines)
	f, err := os.Create(filepath.Join(dir, segmentName(0)))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil {
		f.Close()
		t.Fatalf("no sparse file of 1 TiB here: %v", err)
	}
	f.Close()

	if _, err := VerifyFrom(dir, &key.PublicKey, &mark); err != nil {
		t.Fatalf("VerifyFrom (the start) refuses: %v; the attack needs it to pass", err)
	}
	err, finished := rtVerifyWithin(t, 20*time.Second, dir, &key.PublicKey, &mark)
	if !finished {
		t.Fatalf("HOLE: VerifyUpTo (the background check) has not finished after 20s over 1 TiB of holes in an extra segment file; the edited record 5 is not reached and custodyd keeps serving")
	}
	wantVerifyError(t, err, KindModified, 5)
}

// TestRedteamRealZeroTailDoesNotSlowThePrefixCheck: the same with a tail
// of zeros actually written (not a hole, so no seek skips it): the prefix
// check need not look for torn tails at all.
func TestRedteamRealZeroTailDoesNotSlowThePrefixCheck(t *testing.T) {
	dir, key, _ := tamperFixture(t)
	mark := checkpointAt(t, dir, 20)
	seg := segmentFiles(t, dir)[0]
	lines := readLines(t, seg)
	rtEdit(t, lines, 5)
	writeLines(t, seg, lines)
	// 64 MiB of written zeros, then one non-zero byte: a "torn tail" that
	// Verify must read to the end to report.
	b := make([]byte, 64<<20+1)
	b[len(b)-1] = 'x'
	if err := os.WriteFile(filepath.Join(dir, segmentName(0)), b, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := VerifyUpTo(context.Background(), dir, &key.PublicKey, &mark)
	wantVerifyError(t, err, KindModified, 5)
	t.Logf("VerifyUpTo over 64 MiB of written zeros took %v", time.Since(start))
	// Verify still reports the torn tail.
	if _, err := Verify(dir, &key.PublicKey, &mark); err == nil {
		t.Fatal("Verify passes the edited log")
	}
}

// TestRedteamOverlappingSegmentSplitsTheTwoWalks: root copies the mark's
// record and what follows into a new segment named for the mark
// (audit-<mark>.log), then edits the records after the mark in the original
// segment. VerifyFrom starts in the last segment whose name is at or before
// the mark, the copy, and finds a good chain; VerifyUpTo reads the original
// up to the mark and stops. Nobody reads the original's records after the
// mark: custodyd serves (and Open continues the chain in the copy) over a
// directory that Verify rejects. The defence holds if one of the two walks
// refuses it.
func TestRedteamOverlappingSegmentSplitsTheTwoWalks(t *testing.T) {
	dir, key, last := tamperFixture(t)
	mark := checkpointAt(t, dir, 20)
	seg := segmentFiles(t, dir)[0]
	lines := readLines(t, seg)
	writeLines(t, segPath(dir, 20), lines[19:])
	for seq := 21; seq <= 30; seq++ {
		rtEdit(t, lines, seq)
	}
	writeLines(t, seg, lines)

	if _, err := Verify(dir, &key.PublicKey, &last); err == nil {
		t.Fatal("Verify passes the directory with overlapping segments")
	}
	_, ferr := VerifyFrom(dir, &key.PublicKey, &mark)
	_, uerr := VerifyUpTo(context.Background(), dir, &key.PublicKey, &mark)
	if ferr == nil && uerr == nil {
		t.Fatalf("HOLE: VerifyFrom and VerifyUpTo both pass a directory in which records 21..30 of %s were edited (a copy named %s is read instead); Verify rejects it", filepath.Base(seg), segmentName(20))
	}
}

// TestRedteamRenamedSegmentHidesADeletionFromTheStartOnly: root deletes
// records 3..7 (before the mark) and renames the segment audit-6.log so
// that the mark's record is again where its number puts it. The start
// passes (it skips lines by count); the background check must refuse.
func TestRedteamRenamedSegmentHidesADeletionFromTheStartOnly(t *testing.T) {
	dir, key, _ := tamperFixture(t)
	mark := checkpointAt(t, dir, 20)
	seg := segmentFiles(t, dir)[0]
	lines := readLines(t, seg)
	lines = append(lines[:2:2], lines[7:]...)
	if err := os.Remove(seg); err != nil {
		t.Fatal(err)
	}
	writeLines(t, segPath(dir, 6), lines)
	if _, err := VerifyFrom(dir, &key.PublicKey, &mark); err != nil {
		t.Logf("VerifyFrom refuses too: %v", err)
	}
	_, err := VerifyUpTo(context.Background(), dir, &key.PublicKey, &mark)
	wantVerifyError(t, err, KindDeleted, 3)
}

// TestRedteamNULBeforeTheMark: a NUL byte put into a record before the mark
// cuts that segment's data there; what follows (up to the mark) must not
// be taken as a torn tail that is skipped.
func TestRedteamNULBeforeTheMark(t *testing.T) {
	dir, key, _ := tamperFixture(t)
	mark := checkpointAt(t, dir, 20)
	seg := segmentFiles(t, dir)[0]
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, seg)
	off := 0
	for _, l := range lines[:4] {
		off += len(l)
	}
	b[off+3] = 0 // inside record 5
	if err := os.WriteFile(seg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFrom(dir, &key.PublicKey, &mark); err == nil {
		t.Error("VerifyFrom passes a segment cut by a NUL before the mark")
	}
	if _, err := VerifyUpTo(context.Background(), dir, &key.PublicKey, &mark); err == nil {
		t.Error("VerifyUpTo passes a segment cut by a NUL before the mark")
	}
	if _, err := Verify(dir, &key.PublicKey, &mark); err == nil {
		t.Error("Verify passes a segment cut by a NUL before the mark")
	}
}

// TestRedteamSymlinkedSegmentIsNotRead: a segment replaced by a symlink to
// an edited copy is not a segment at all (listSegments takes regular files
// only), so the start finds no record and refuses.
func TestRedteamSymlinkedSegmentIsNotRead(t *testing.T) {
	dir, key, _ := tamperFixture(t)
	mark := checkpointAt(t, dir, 20)
	seg := segmentFiles(t, dir)[0]
	lines := readLines(t, seg)
	rtEdit(t, lines, 5)
	elsewhere := filepath.Join(t.TempDir(), "edited.log")
	writeLines(t, elsewhere, lines)
	os.Remove(seg)
	if err := os.Symlink(elsewhere, seg); err != nil {
		t.Fatal(err)
	}
	_, err := VerifyFrom(dir, &key.PublicKey, &mark)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Kind != KindTruncated {
		t.Fatalf("VerifyFrom over a symlinked segment: %v, want truncated", err)
	}
}

// TestRedteamForgedLastLineIsNotTheHead: the head is now found by parsing
// only the last complete line. Root appends a line that parses as a record
// but whose hash is made up (seq far ahead): Open takes it as the head, and
// the start's VerifyFrom, which reads to the end, must refuse it. A forged
// last line that does not parse falls back to the last one that does.
func TestRedteamForgedLastLineIsNotTheHead(t *testing.T) {
	dir, key, last := tamperFixture(t)
	seg := segmentFiles(t, dir)[0]
	lines := readLines(t, seg)
	forged := editRecord(t, lines[len(lines)-1], func(r *Record) {
		r.Seq, r.PrevHash = 1000, r.Hash
		h := sha256.Sum256([]byte("made up"))
		r.Hash = h[:]
	})
	writeLines(t, seg, append(lines, forged))
	l := openLog(t, dir, key, testOptions())
	if seq, _ := l.Head(); seq != 1000 {
		t.Logf("Open's head: %d", seq)
	}
	appendN(t, l, 2)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFrom(dir, &key.PublicKey, &last); err == nil {
		t.Fatal("VerifyFrom (the start) passes a log whose head is a forged last line")
	}

	// A last line that is not JSON, after a record whose hash is made up:
	// the fallback head is the made-up record, and VerifyFrom still reads it.
	dir2, key2, last2 := tamperFixture(t)
	seg2 := segmentFiles(t, dir2)[0]
	lines2 := readLines(t, seg2)
	writeLines(t, seg2, append(lines2, forged, []byte(`{"seq":`)))
	l2 := openLog(t, dir2, key2, testOptions())
	appendN(t, l2, 1)
	l2.Close(context.Background())
	if _, err := VerifyFrom(dir2, &key2.PublicKey, &last2); err == nil {
		t.Fatal("VerifyFrom passes a made-up head found behind an unparseable last line")
	}
}

// TestRedteamOldCheckpointReplayedBeforeTheMark: checkpoints.log games. A
// validly signed checkpoint line duplicated, or moved, changes nothing; a
// checkpoint whose head was altered no longer verifies; one beyond the mark
// is checked by VerifyFrom against the records.
func TestRedteamOldCheckpointReplayedBeforeTheMark(t *testing.T) {
	dir, key, _ := tamperFixture(t)
	mark := checkpointAt(t, dir, 20)
	path := filepath.Join(dir, checkpointsFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ls := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
	// A signed checkpoint with its head altered.
	var cp map[string]any
	if err := json.Unmarshal(ls[0], &cp); err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte("x"))
	cp["head"] = h[:]
	alt, _ := json.Marshal(cp)
	os.WriteFile(path, append(append([]byte(nil), b...), append(alt, '\n')...), 0o600)
	if _, err := VerifyFrom(dir, &key.PublicKey, &mark); err == nil {
		t.Error("VerifyFrom passes an altered checkpoint")
	}
	// The log's records after the mark edited, the later checkpoints
	// removed: VerifyFrom reads those records and refuses.
	os.WriteFile(path, append(ls[0], '\n'), 0o600)
	seg := segmentFiles(t, dir)[0]
	lines := readLines(t, seg)
	rtEdit(t, lines, 25)
	writeLines(t, seg, lines)
	if _, err := VerifyFrom(dir, &key.PublicKey, &mark); err == nil {
		t.Error("VerifyFrom passes an edit after the mark with the later checkpoints removed")
	}
}
