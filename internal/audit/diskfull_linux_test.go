//go:build linux

package audit

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestFullDiskKeepsThePreallocatedSegmentWritableAndFailsClosedAfter puts a
// log on a tiny tmpfs and fills it. The active segment's space was reserved
// when it was created, so records keep going into it; the next segment
// cannot be reserved or written, so appends fail closed (ErrUnavailable);
// once space is freed the log continues without a reopen, and verifies. It
// needs root to mount the tmpfs (CI runs as root).
func TestFullDiskKeepsThePreallocatedSegmentWritableAndFailsClosedAfter(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test as root (it mounts a 256 KiB tmpfs)")
		}
		t.Skip("needs root to mount a 256 KiB tmpfs")
	}
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	key := newKey(t)
	opts := testOptions()
	opts.SegmentSize = 64 << 10
	l, err := Open(context.Background(), dir, key, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(context.Background())
	appendN(t, l, 3)
	seg := segmentFiles(t, dir)[0]
	if fi, err := os.Stat(seg); err != nil || fi.Size() != opts.SegmentSize {
		t.Fatalf("segment not preallocated on tmpfs: %v %v", fi.Size(), err)
	}
	// Fill the file system.
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write(make([]byte, 1<<20)) // stops at ENOSPC
	f.Close()

	// The reserved segment takes records until it is full...
	ok := 0
	var failure error
	for i := 0; i < 1000 && failure == nil; i++ {
		if _, err := l.Append(context.Background(), sampleRecord(i)); err != nil {
			failure = err
			break
		}
		ok++
	}
	if !errors.Is(failure, ErrUnavailable) {
		t.Fatalf("after %d appends on a full disk: err = %v, want ErrUnavailable", ok, failure)
	}
	if ok*300 < int(opts.SegmentSize)/2 {
		t.Fatalf("only %d records went into the reserved segment", ok)
	}
	// ...and the log stays closed while the disk is full.
	if _, err := l.Append(context.Background(), sampleRecord(0)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("append on a full disk = %v, want ErrUnavailable", err)
	}
	if err := l.Healthy(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Healthy = %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	want := uint64(3 + ok + 1)
	if seq, err := l.Append(context.Background(), sampleRecord(0)); err != nil || seq != want {
		t.Fatalf("append after freeing space = %d, %v; want %d", seq, err, want)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, dir, key, nil)
	if rep.Records != want || len(rep.TornTails) != 0 {
		t.Fatalf("report = %+v", rep)
	}
	t.Logf("full disk: %d records into the reserved segment, then fail closed; %d segments", ok, rep.Segments)
}
