package audit

import (
	"bufio"
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
type lineReader struct {
	r   *bufio.Reader
	off int64 // offset just after the last line returned
}

func newLineReader(f *os.File, off int64) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(io.NewSectionReader(f, off, 1<<62), 64<<10), off: off}
}

// next returns the next line without its newline, the offset at which it
// starts, and whether it was terminated by a newline (an unterminated line is
// the end of the file: a torn write or a write in progress). It returns io.EOF
// when nothing is left. A line longer than maxLineLen is returned as an
// invalid placeholder so that callers reject it without holding it in memory.
func (lr *lineReader) next() (line []byte, start int64, complete bool, err error) {
	start = lr.off
	var buf []byte
	tooLong := false
	for {
		chunk, err := lr.r.ReadSlice('\n')
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

// parseRecord decodes one JSON line strictly.
func parseRecord(line []byte) (*Record, error) {
	var r Record
	if err := strictjson.Unmarshal(line, &r); err != nil {
		return nil, err
	}
	switch {
	case r.Format == recordFormat && r.Replica == "":
	case r.Format == recordFormatReplica && r.Replica != "":
	default:
		return nil, fmt.Errorf("unknown record format %d (replica %q)", r.Format, r.Replica)
	}
	return &r, nil
}

// lastRecord scans a segment and returns its last parseable record and the
// offset just after that record's line (0 and nil if there is none).
func lastRecord(path string) (*Record, int64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, 0, err
	}
	defer f.Close()
	lr := newLineReader(f, 0)
	var last *Record
	var end int64
	for {
		line, _, complete, err := lr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, 0, err
		}
		if !complete {
			break
		}
		if r, err := parseRecord(line); err == nil {
			last, end = r, lr.off
		}
	}
	return last, end, lr.off, nil
}

func segPath(dir string, first uint64) string { return filepath.Join(dir, segmentName(first)) }
