package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// tamperFixture builds a closed log of 30 records with checkpoints at 10, 20
// and 30, and returns the checkpoint at 30 as an external anchor.
func tamperFixture(t *testing.T) (string, *ecdsa.PrivateKey, Checkpoint) {
	t.Helper()
	dir, key := t.TempDir(), newKey(t)
	l, err := Open(context.Background(), dir, key, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	var last Checkpoint
	for i := 0; i < 3; i++ {
		appendN(t, l, 10)
		if last, err = l.Checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, dir, key, &last)
	if rep.Records != 30 || rep.CheckpointsMatched != 3 || !rep.AnchorChecked || rep.LastCheckpoint.Seq != 30 {
		t.Fatalf("fixture does not verify cleanly: %+v", rep)
	}
	return dir, key, last
}

func editRecord(t *testing.T, line []byte, edit func(*Record)) []byte {
	t.Helper()
	r, err := parseRecord(bytes.TrimSuffix(line, []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	edit(r)
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerifyDetectsEachKindOfTampering(t *testing.T) {
	cases := []struct {
		name   string
		tamper func(t *testing.T, dir string, lines [][]byte) [][]byte
		anchor bool
		kind   Kind
		seq    uint64
		line   int
	}{
		{
			name: "field edited",
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				lines[6] = editRecord(t, lines[6], func(r *Record) { r.Identity = "someone-else" })
				return lines
			},
			kind: KindModified, seq: 7, line: 7,
		},
		{
			name: "outcome flipped from ok to denied",
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				lines[11] = bytes.Replace(lines[11], []byte(`"outcome":"ok"`), []byte(`"outcome":"denied"`), 1)
				return lines
			},
			kind: KindModified, seq: 12, line: 12,
		},
		{
			name: "line deleted",
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				return append(lines[:6:6], lines[7:]...)
			},
			kind: KindDeleted, seq: 7, line: 7,
		},
		{
			name: "line duplicated",
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				out := append(lines[:7:7], lines[6])
				return append(out, lines[7:]...)
			},
			kind: KindInserted, seq: 7, line: 8,
		},
		{
			name: "two lines swapped",
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				lines[6], lines[7] = lines[7], lines[6]
				return lines
			},
			kind: KindReordered, seq: 7, line: 7,
		},
		{
			name: "record edited and its hash recomputed",
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				lines[6] = editRecord(t, lines[6], func(r *Record) { r.Key = "other"; r.Hash = computeHash(r) })
				return lines
			},
			kind: KindModified, seq: 8, line: 8, // record 8 no longer chains
		},
		{
			name: "tail rewritten into a consistent chain",
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				var prev []byte
				for i := 14; i < len(lines); i++ {
					lines[i] = editRecord(t, lines[i], func(r *Record) {
						if prev != nil {
							r.PrevHash = prev
						}
						if i == 14 {
							r.Outcome = OutcomeDenied
						}
						r.Hash = computeHash(r)
						prev = r.Hash
					})
				}
				return lines
			},
			kind: KindCheckpointMismatch, seq: 20, line: 20,
		},
		{
			name: "truncated after the last checkpoint, checkpoint removed too",
			tamper: func(t *testing.T, dir string, lines [][]byte) [][]byte {
				cps := readLines(t, filepath.Join(dir, checkpointsFile))
				writeLines(t, filepath.Join(dir, checkpointsFile), cps[:2])
				return lines[:25]
			},
			anchor: true, kind: KindTruncated, seq: 26,
		},
		{
			name: "truncated and rewritten past the anchor",
			tamper: func(t *testing.T, dir string, lines [][]byte) [][]byte {
				cps := readLines(t, filepath.Join(dir, checkpointsFile))
				writeLines(t, filepath.Join(dir, checkpointsFile), cps[:2])
				lines[29] = editRecord(t, lines[29], func(r *Record) { r.Detail = "rewritten"; r.Hash = computeHash(r) })
				return lines
			},
			anchor: true, kind: KindTruncated, seq: 30, line: 30,
		},
		{
			name: "checkpoint signature forged",
			tamper: func(t *testing.T, dir string, lines [][]byte) [][]byte {
				path := filepath.Join(dir, checkpointsFile)
				cps := readLines(t, path)
				var cp Checkpoint
				if err := json.Unmarshal(cps[1], &cp); err != nil {
					t.Fatal(err)
				}
				cp.Head = bytes.Repeat([]byte{1}, HashSize)
				b, _ := json.Marshal(cp)
				cps[1] = b
				writeLines(t, path, cps)
				return lines
			},
			kind: KindBadSignature, seq: 20, line: 2,
		},
		{
			name: "garbage line in the middle",
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				lines[3] = []byte("{not json")
				return lines
			},
			kind: KindModified, seq: 4, line: 4,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, key, anchor := tamperFixture(t)
			seg := segmentFiles(t, dir)[0]
			writeLines(t, seg, tc.tamper(t, dir, readLines(t, seg)))
			var a *Checkpoint
			if tc.anchor {
				a = &anchor
				// Without the external anchor this tampering is invisible.
				if _, err := Verify(dir, &key.PublicKey, nil); err != nil {
					t.Fatalf("expected tampering to pass without an anchor, got %v", err)
				}
			}
			_, err := Verify(dir, &key.PublicKey, a)
			ve := wantVerifyError(t, err, tc.kind, tc.seq)
			if tc.line != 0 && ve.Line != tc.line {
				t.Fatalf("line = %d, want %d (%v)", ve.Line, tc.line, ve)
			}
		})
	}
}

func TestVerifyRejectsAnchorWithBadSignature(t *testing.T) {
	dir, key, anchor := tamperFixture(t)
	anchor.Seq = 31
	_, err := Verify(dir, &key.PublicKey, &anchor)
	wantVerifyError(t, err, KindBadSignature, 31)
}

func TestVerifyRejectsCheckpointsFromAnotherKey(t *testing.T) {
	dir, _, _ := tamperFixture(t)
	other := newKey(t)
	_, err := Verify(dir, &other.PublicKey, nil)
	wantVerifyError(t, err, KindBadSignature, 10)
}

func TestVerifyEmptyDirectory(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	rep := mustVerify(t, dir, key, nil)
	if rep.Records != 0 {
		t.Fatalf("report = %+v", rep)
	}
}

func TestVerifyDetectsDeletedSegment(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	opts := testOptions()
	opts.SegmentSize = 1 // every batch starts a new segment
	l := openLog(t, dir, key, opts)
	appendN(t, l, 6)
	segs := segmentFiles(t, dir)
	if len(segs) != 6 {
		t.Fatalf("segments = %d, want 6", len(segs))
	}
	if err := os.Remove(segs[2]); err != nil {
		t.Fatal(err)
	}
	_, err := Verify(dir, &key.PublicKey, nil)
	ve := wantVerifyError(t, err, KindDeleted, 3)
	if ve.Segment != segmentName(4) || ve.Line != 1 {
		t.Fatalf("location = %s line %d", ve.Segment, ve.Line)
	}
	// Deleting the first segment is a deletion too.
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	_, err = Verify(dir, &key.PublicKey, nil)
	wantVerifyError(t, err, KindDeleted, 1)
}

func TestVerifyErrorIsTyped(t *testing.T) {
	dir, key, _ := tamperFixture(t)
	seg := segmentFiles(t, dir)[0]
	lines := readLines(t, seg)
	writeLines(t, seg, append(lines[:4:4], lines[5:]...))
	_, err := Verify(dir, &key.PublicKey, nil)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Segment != segmentName(1) {
		t.Fatalf("err = %#v", err)
	}
}
