package audit

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestSegmentRotationAndPruneKeepVerifyPassing(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	opts := testOptions()
	opts.SegmentSize = 2 << 10 // a handful of records per segment
	l := openLog(t, dir, key, opts)
	appendN(t, l, 100)
	before := len(segmentFiles(t, dir))
	if before < 5 {
		t.Fatalf("rotation did not happen: %d segments", before)
	}
	mustVerify(t, dir, key, nil)

	if _, err := l.Prune(context.Background(), 60); !errors.Is(err, ErrNotCovered) {
		t.Fatalf("Prune without checkpoint = %v, want ErrNotCovered", err)
	}
	if len(segmentFiles(t, dir)) != before {
		t.Fatal("refused prune deleted segments")
	}
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	n, err := l.Prune(context.Background(), 60)
	if err != nil || n == 0 {
		t.Fatalf("Prune = %d, %v", n, err)
	}
	rep := mustVerify(t, dir, key, nil)
	if rep.Pruned == nil || rep.FirstSeq <= 1 || rep.FirstSeq > 60 || rep.LastSeq != 100 {
		t.Fatalf("report after prune = %+v", rep)
	}
	if rep.FirstSeq != rep.Pruned.FirstSeq {
		t.Fatalf("first record %d != marker %d", rep.FirstSeq, rep.Pruned.FirstSeq)
	}
	// Nothing below the first retained record is left.
	var got []uint64
	if err := l.Read(context.Background(), Filter{}, func(r Record) error { got = append(got, r.Seq); return nil }); err != nil {
		t.Fatal(err)
	}
	if got[0] != rep.FirstSeq || uint64(len(got)) != 100-rep.FirstSeq+1 {
		t.Fatalf("read %d records from %d", len(got), got[0])
	}
	// The log continues and a reopened log continues too.
	appendN(t, l, 10)
	l.Close(context.Background())
	l2 := openLog(t, dir, key, opts)
	if seq, err := l2.Append(context.Background(), sampleRecord(1)); err != nil || seq != 111 {
		t.Fatalf("Append after reopen = %d, %v", seq, err)
	}
	mustVerify(t, dir, key, nil)
}

func TestPruneNeverDeletesTheActiveSegment(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 10)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, err := l.Prune(context.Background(), 11); err != nil || n != 0 {
		t.Fatalf("Prune = %d, %v; want nothing deleted", n, err)
	}
	if rep := mustVerify(t, dir, key, nil); rep.Records != 10 {
		t.Fatalf("report = %+v", rep)
	}
}

func TestForgedPruneIsDetected(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	opts := testOptions()
	opts.SegmentSize = 1
	l := openLog(t, dir, key, opts)
	appendN(t, l, 10)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Prune(context.Background(), 4); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, dir, key, nil)

	t.Run("more segments deleted than the marker allows", func(t *testing.T) {
		if err := os.Remove(segmentFiles(t, dir)[0]); err != nil {
			t.Fatal(err)
		}
		_, err := Verify(dir, &key.PublicKey, nil)
		wantVerifyError(t, err, KindDeleted, 4)
	})
	t.Run("marker edited to cover the deletion", func(t *testing.T) {
		path := filepath.Join(dir, prunedFile)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var m PruneMarker
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		m.FirstSeq = 5
		b, _ = json.Marshal(m)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = Verify(dir, &key.PublicKey, nil)
		wantVerifyError(t, err, KindBadSignature, 5)
	})
}
