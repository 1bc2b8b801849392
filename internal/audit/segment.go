package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/custodyhq/custody/internal/strictjson"
)

const (
	segPrefix = "audit-"
	segSuffix = ".log"
)

// segmentName returns the file name of the segment whose first record is seq.
func segmentName(first uint64) string {
	return fmt.Sprintf("%s%020d%s", segPrefix, first, segSuffix)
}

type segment struct {
	first uint64
	name  string
}

// listSegments returns the segments in dir in sequence order.
func listSegments(dir string) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []segment
	for _, e := range ents {
		n := e.Name()
		if !e.Type().IsRegular() || !strings.HasPrefix(n, segPrefix) || !strings.HasSuffix(n, segSuffix) {
			continue
		}
		digits := strings.TrimSuffix(strings.TrimPrefix(n, segPrefix), segSuffix)
		if len(digits) != 20 {
			continue
		}
		first, err := strconv.ParseUint(digits, 10, 64)
		if err != nil {
			continue
		}
		segs = append(segs, segment{first: first, name: n})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].first < segs[j].first })
	return segs, nil
}

// lineReader reads newline-terminated lines with a bounded length, tracking
// the byte offset so that callers can resume or truncate exactly.
//
// A NUL byte ends a segment's data: the writer never writes one (JSON
// escapes it), so it is where the preallocated, never-written tail begins
// (see the package doc). The reader returns what precedes it as an
// unterminated line, if anything, and then io.EOF.
type lineReader struct {
	r    *bufio.Reader
	off  int64 // offset just after the last line returned
	zero bool  // a NUL was met: nothing more is read
}

func newLineReader(f *os.File, off int64) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(io.NewSectionReader(f, off, 1<<62), 64<<10), off: off}
}

// next returns the next line without its newline, the offset at which it
// starts, and whether it was terminated by a newline (an unterminated line is
// the end of the data: a torn write or a write in progress). It returns io.EOF
// when nothing is left. A line longer than maxLineLen is returned as an
// invalid placeholder so that callers reject it without holding it in memory.
func (lr *lineReader) next() (line []byte, start int64, complete bool, err error) {
	start = lr.off
	if lr.zero {
		return nil, start, false, io.EOF
	}
	var buf []byte
	tooLong := false
	for {
		chunk, err := lr.r.ReadSlice('\n')
		if i := bytes.IndexByte(chunk, 0); i >= 0 {
			chunk, err, lr.zero = chunk[:i], io.EOF, true
		}
		lr.off += int64(len(chunk))
		if !tooLong {
			buf = append(buf, chunk...)
			if len(buf) > maxLineLen {
				tooLong, buf = true, nil
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			if lr.off == start {
				return nil, start, false, io.EOF
			}
			if tooLong {
				buf = []byte("!line too long")
			}
			return buf, start, false, nil
		}
		if err != nil {
			return nil, start, false, err
		}
		if tooLong {
			return []byte("!line too long"), start, true, nil
		}
		return buf[:len(buf)-1], start, true, nil
	}
}

// writtenEnd returns the offset just after the last non-zero byte of f at
// or after from, or from if there is none: where the bytes written into a
// segment's tail end. An all-zero tail is preallocated space, never written.
func writtenEnd(f *os.File, from int64) (int64, error) {
	end := from
	buf := make([]byte, 64<<10)
	for off := from; ; {
		// Holes read as zeros: skip them rather than read them (a sparse
		// file of terabytes must not hold a start or a verification up).
		next, more := nextData(f, off)
		if !more {
			return end, nil
		}
		off = max(off, next)
		n, err := f.ReadAt(buf, off)
		for i := n - 1; i >= 0; i-- {
			if buf[i] != 0 {
				end = off + int64(i) + 1
				break
			}
		}
		off += int64(n)
		if errors.Is(err, io.EOF) {
			return end, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// parseRecord decodes one JSON line strictly.
func parseRecord(line []byte) (*Record, error) {
	var r Record
	if err := strictjson.Unmarshal(line, &r); err != nil {
		return nil, err
	}
	switch {
	case r.Format == recordFormat && r.Replica == "":
	case r.Format == recordFormatReplica && r.Replica != "":
	case r.Format == recordFormatStoreRev:
	default:
		return nil, fmt.Errorf("unknown record format %d (replica %q)", r.Format, r.Replica)
	}
	return &r, nil
}

// lastRecord scans a segment and returns its last parseable record, the
// offset just after that record's line (0 and nil if there is none), the
// offset where written bytes end (writtenEnd: bytes between the two were
// never acknowledged) and the file's size (which a preallocated zero tail
// makes larger still).
func lastRecord(path string) (rec *Record, end, written, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, 0, 0, err
	}
	defer f.Close()
	// Only the last complete line is parsed (a start must not cost a parse
	// per record); if it does not parse, every line is, and the last one
	// that does is the head.
	var last []byte
	var lastEnd int64
	lr := newLineReader(f, 0)
	for {
		line, _, complete, err := lr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, 0, 0, err
		}
		if !complete {
			break
		}
		last, lastEnd = line, lr.off
	}
	if last != nil {
		if r, err := parseRecord(last); err == nil {
			rec, end = r, lastEnd
		} else if rec, end, err = lastParseable(f); err != nil {
			return nil, 0, 0, 0, err
		}
	}
	if written, err = writtenEnd(f, end); err != nil {
		return nil, 0, 0, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, 0, 0, err
	}
	return rec, end, written, fi.Size(), nil
}

// lastParseable is the last complete line of f that parses as a record,
// and the offset just after it.
func lastParseable(f *os.File) (rec *Record, end int64, err error) {
	lr := newLineReader(f, 0)
	for {
		line, _, complete, err := lr.next()
		if errors.Is(err, io.EOF) || err == nil && !complete {
			return rec, end, nil
		}
		if err != nil {
			return nil, 0, err
		}
		if r, err := parseRecord(line); err == nil {
			rec, end = r, lr.off
		}
	}
}

func segPath(dir string, first uint64) string { return filepath.Join(dir, segmentName(first)) }

// storeRevField is how a record of format 3 writes its store revision. A
// record's string fields escape '"', so it cannot occur inside one.
var storeRevField = []byte(`"store_rev":`)

// newestStoreRev is the highest store revision written in the newest of
// segs that holds any (0 if none does), found by looking for the field, not
// by parsing every record: it reads segments only while the log's last
// record carries no revision, which custodyd never leaves behind itself.
func newestStoreRev(dir string, segs []segment) (uint64, error) {
	for i := len(segs) - 1; i >= 0; i-- {
		f, err := os.Open(filepath.Join(dir, segs[i].name))
		if err != nil {
			return 0, err
		}
		var rev uint64
		found := false
		lr := newLineReader(f, 0)
		for {
			line, _, complete, err := lr.next()
			if errors.Is(err, io.EOF) || err == nil && !complete {
				break
			}
			if err != nil {
				f.Close()
				return 0, err
			}
			j := bytes.LastIndex(line, storeRevField)
			if j < 0 {
				continue
			}
			rest := line[j+len(storeRevField):]
			k := 0
			for k < len(rest) && rest[k] >= '0' && rest[k] <= '9' {
				k++
			}
			if v, err := strconv.ParseUint(string(rest[:k]), 10, 64); err == nil {
				rev, found = max(rev, v), true
			}
		}
		f.Close()
		if found {
			return rev, nil
		}
	}
	return 0, nil
}
