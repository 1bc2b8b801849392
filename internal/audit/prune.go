package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Prune deletes whole segments all of whose records have sequence numbers
// below beforeSeq. It refuses (ErrNotCovered, nothing deleted) unless the
// latest checkpoint covers beforeSeq-1; call Checkpoint first if needed. The
// active segment is never deleted, so a little more may be kept than asked.
// Before deleting anything it writes pruned.json, a PruneMarker signed by the
// audit key naming the first retained record and its prev_hash, so Verify
// still passes. It returns the number of segments deleted.
func (l *Log) Prune(ctx context.Context, beforeSeq uint64) (int, error) {
	l.pruneMu.Lock()
	defer l.pruneMu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	cp, ok := l.LatestCheckpoint()
	if beforeSeq <= 1 {
		return 0, nil
	}
	if !ok || cp.Seq < beforeSeq-1 {
		return 0, fmt.Errorf("%w: prune before %d needs a checkpoint at or after %d", ErrNotCovered, beforeSeq, beforeSeq-1)
	}
	l.mu.Lock()
	active := l.activeFirst
	l.mu.Unlock()
	segs, err := listSegments(l.dir)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// Delete a prefix: segment i goes if the next one starts at or before
	// beforeSeq (so all of i is below it) and neither is the active segment.
	k := 0
	for k+1 < len(segs) && segs[k+1].first <= beforeSeq && segs[k].first != active && segs[k+1].first-1 <= cp.Seq {
		k++
	}
	if k == 0 {
		return 0, nil
	}
	first, err := firstRecord(filepath.Join(l.dir, segs[k].name))
	if err != nil {
		return 0, err
	}
	m := PruneMarker{FirstSeq: first.Seq, PrevHash: first.PrevHash, CheckpointSeq: cp.Seq,
		Time: time.Now().UTC().Round(0), InstanceID: l.opts.InstanceID}
	if m.Signature, err = sign(l.signer, m.signedBytes()); err != nil {
		return 0, err
	}
	if err := writeFileAtomic(filepath.Join(l.dir, prunedFile), m); err != nil {
		return 0, fmt.Errorf("%w: write prune marker: %w", ErrUnavailable, err)
	}
	for _, s := range segs[:k] {
		if err := os.Remove(filepath.Join(l.dir, s.name)); err != nil {
			return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	if err := syncDir(l.dir); err != nil {
		return k, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	l.log.Info("audit: pruned segments", "segments", k, "first_retained_seq", first.Seq)
	return k, nil
}

func firstRecord(path string) (*Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer f.Close()
	line, _, complete, err := newLineReader(f, 0).next()
	if errors.Is(err, io.EOF) || (err == nil && !complete) {
		return nil, fmt.Errorf("%w: %s has no complete record", ErrCorrupt, filepath.Base(path))
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	r, err := parseRecord(line)
	if err != nil {
		return nil, fmt.Errorf("%w: first record of %s: %w", ErrCorrupt, filepath.Base(path), err)
	}
	return r, nil
}

// writeFileAtomic writes v as JSON to path via a fsynced temporary file and a
// rename, then fsyncs the directory.
func writeFileAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}
