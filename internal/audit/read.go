package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Filter selects records. Zero fields match everything. Since is inclusive,
// Until exclusive; AfterSeq selects records with a greater sequence.
type Filter struct {
	Identity string
	Key      string
	Method   string
	Since    time.Time
	Until    time.Time
	AfterSeq uint64
}

func (f *Filter) match(r *Record) bool {
	return r.Seq > f.AfterSeq &&
		(f.Identity == "" || r.Identity == f.Identity) &&
		(f.Key == "" || r.Key == f.Key) &&
		(f.Method == "" || r.Method == f.Method) &&
		(f.Since.IsZero() || !r.Time.Before(f.Since)) &&
		(f.Until.IsZero() || r.Time.Before(f.Until))
}

// cursor is a reading position: a segment and a byte offset in it. Records
// up to and including seq have been consumed.
type cursor struct {
	segFirst uint64
	off      int64
	seq      uint64
}

// scan delivers records after the cursor with seq <= limit, advancing the
// cursor past each one. It stops at an unterminated line (a write in
// progress) or at the first record beyond limit (written, not yet durable).
func scan(ctx context.Context, dir string, cur *cursor, limit uint64, fn func(*Record) error) error {
	segs, err := listSegments(dir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// Start in the last segment that begins at or before the next record.
	start := 0
	for i, s := range segs {
		if s.first <= cur.seq+1 && s.first >= cur.segFirst {
			start = i
		}
	}
	for i := start; i < len(segs); i++ {
		s := segs[i]
		if s.first != cur.segFirst {
			cur.segFirst, cur.off = s.first, 0
		}
		done, err := scanSegment(ctx, dir, s.name, cur, limit, fn)
		if err != nil || done {
			return err
		}
	}
	return nil
}

func scanSegment(ctx context.Context, dir, name string, cur *cursor, limit uint64, fn func(*Record) error) (bool, error) {
	f, err := os.Open(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // pruned while we listed
	}
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer f.Close()
	lr := newLineReader(f, cur.off)
	for n := 0; ; n++ {
		if n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return true, err
			}
		}
		line, _, complete, err := lr.next()
		if errors.Is(err, io.EOF) || (err == nil && !complete) {
			return false, nil
		}
		if err != nil {
			return true, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		r, err := parseRecord(line)
		if err != nil {
			return true, fmt.Errorf("%w: %s at offset %d: not a valid record", ErrCorrupt, name, lr.off)
		}
		if r.Seq > limit {
			return true, nil
		}
		cur.off = lr.off
		if r.Seq <= cur.seq {
			continue
		}
		cur.seq = r.Seq
		if err := fn(r); err != nil {
			return true, err
		}
	}
}

// Read calls fn, in sequence order, for every durable record matching f. An
// error from fn stops the read and is returned.
func (l *Log) Read(ctx context.Context, f Filter, fn func(Record) error) error {
	cur := &cursor{seq: f.AfterSeq}
	limit, _ := l.Head()
	return scan(ctx, l.dir, cur, limit, func(r *Record) error {
		if f.match(r) {
			return fn(*r)
		}
		return nil
	})
}

// Follow is Read that does not stop at the end: it keeps delivering matching
// records as they become durable (tail -f) until ctx ends, fn fails or the Log
// is closed. It returns ctx's error, fn's error or ErrClosed.
func (l *Log) Follow(ctx context.Context, f Filter, fn func(Record) error) error {
	cur := &cursor{seq: f.AfterSeq}
	for {
		l.mu.Lock()
		limit, wait := l.nextSeq-1, l.notify
		l.mu.Unlock()
		if limit > cur.seq {
			err := scan(ctx, l.dir, cur, limit, func(r *Record) error {
				if f.match(r) {
					return fn(*r)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.writerDone:
			return ErrClosed
		case <-wait:
		}
	}
}
