// Package memscan searches the memory of a running process for secrets, for
// tests that prove a PIN or a share is not left behind (issue 11: "PIN,
// shares and plaintext data keys zeroed after use").
//
// Invariants:
//
//   - Every readable mapping of the process is searched: anonymous memory
//     (the Go heap and stacks, C malloc arenas, thread stacks, locked
//     secmem pages) page by page wherever a page is resident or swapped
//     (/proc/PID/pagemap; a private anonymous page that is neither was
//     never written, or was given back and reads as zeros), and
//     file-backed and shared mappings whole.
//
//   - A finding is any run of at least MinRun consecutive bytes of a secret
//     (the whole secret when it is shorter), wherever it starts in the
//     secret: a copy whose head was overwritten by an allocator's free-list
//     pointers is still a copy. Findings name the secret, the address and
//     the mapping, never the bytes.
//
//   - The process is stopped (SIGSTOP) while it is searched and continued
//     (SIGCONT) afterwards, so the search sees one moment of it: no mapping
//     comes or goes, no secret moves from a page not yet read to one
//     already read.
//
// The scanning process must be allowed to read the target's memory
// (/proc/PID/mem): the same user and a dumpable target, or CAP_SYS_PTRACE.
// A process cannot usefully scan itself: the secrets it searches for are in
// its own memory.
package memscan

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MinRun is the shortest run of a secret's bytes reported as a copy. 16
// bytes of a random PIN over 62 symbols are about 95 bits: no accident.
const MinRun = 16

// ErrNotPermitted: this process may not read the target's memory.
var ErrNotPermitted = errors.New("memscan: not permitted to read the process's memory")

// Mapping is one line of /proc/PID/maps.
type Mapping struct {
	Start, End uint64
	Perms      string
	Path       string // "" for anonymous memory
}

func (m Mapping) String() string {
	p := m.Path
	if p == "" {
		p = "anonymous"
	}
	return fmt.Sprintf("%x-%x %s %s", m.Start, m.End, m.Perms, p)
}

// Finding is one copy (or long fragment) of a secret.
type Finding struct {
	Secret  string // the caller's name for it
	Addr    uint64 // where the run starts
	Len     int    // how many consecutive bytes of the secret
	Offset  int    // where in the secret the run starts
	Whole   bool   // the run is the whole secret
	Mapping Mapping
}

func (f Finding) String() string {
	what := "a copy of " + f.Secret
	if !f.Whole {
		what = fmt.Sprintf("%d bytes of %s (from byte %d)", f.Len, f.Secret, f.Offset)
	}
	return fmt.Sprintf("%s at %#x (%s)", what, f.Addr, f.Mapping)
}

// Report is the outcome of one scan.
type Report struct {
	Findings []Finding
	Mappings int   // readable mappings searched
	Bytes    int64 // bytes read and searched
	Skipped  []Mapping
}

// Scan searches every readable mapping of process pid for the secrets
// (name → bytes). Secrets shorter than 4 bytes are refused: they would
// match by accident.
func Scan(pid int, secrets map[string][]byte) (*Report, error) {
	ix, err := newIndex(secrets)
	if err != nil {
		return nil, err
	}
	resume, err := stop(pid)
	if err != nil {
		return nil, err
	}
	defer resume()
	maps, err := readMaps(pid)
	if err != nil {
		return nil, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("%w: %v", ErrNotPermitted, err)
		}
		return nil, err
	}
	defer mem.Close()
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return nil, fmt.Errorf("memscan: %w", err)
	}
	defer pagemap.Close()

	r := &Report{}
	s := scanner{ix: ix, mem: mem, r: r, buf: make([]byte, 1+chunk+ix.longest)}
	page := uint64(os.Getpagesize())
	for _, m := range maps {
		if m.Perms[0] != 'r' || strings.HasPrefix(m.Path, "[v") { // [vvar], [vdso], [vsyscall]: kernel's
			continue
		}
		r.Mappings++
		// File-backed and shared mappings whole: their pages may hold data
		// this process never faulted in (the file, another mapper's writes).
		if m.Path != "" && !strings.HasPrefix(m.Path, "[") || m.Perms[3] == 's' {
			if !s.region(m, m.Start, m.End) {
				r.Skipped = append(r.Skipped, m)
			}
			continue
		}
		// Private anonymous memory (heaps, stacks): only the pages that
		// exist.
		runs, err := residentRuns(pagemap, m, page)
		if err != nil {
			return nil, err
		}
		for _, run := range runs {
			if !s.region(m, run[0], run[1]) {
				r.Skipped = append(r.Skipped, m)
				break
			}
		}
	}
	sort.Slice(r.Findings, func(i, j int) bool { return r.Findings[i].Addr < r.Findings[j].Addr })
	return r, nil
}

// chunk is how much memory is read at once.
const chunk = 4 << 20

type scanner struct {
	ix  *index
	mem *os.File
	r   *Report
	buf []byte
}

// region searches [lo, hi) of mapping m; false if it could not be read.
func (s *scanner) region(m Mapping, lo, hi uint64) bool {
	// buf[0] is the byte before the chunk (look-behind, to report a run
	// once, where it starts); then the chunk; then enough of what follows
	// to see a run that starts near its end to its end.
	prev, havePrev := byte(0), false
	for off := lo; off < hi; off += chunk {
		n := int(min(uint64(chunk+s.ix.longest), hi-off))
		got, err := s.mem.ReadAt(s.buf[1:1+n], int64(off))
		if got == 0 {
			if off == lo && err != nil && !errors.Is(err, io.EOF) {
				return false // device memory, a guard page, an unmapped race
			}
			return true
		}
		s.buf[0] = prev
		s.r.Bytes += int64(min(got, chunk))
		s.ix.search(s.buf[:1+got], havePrev, min(got, chunk), func(i, sec, soff, l int) {
			name := s.ix.names[sec]
			s.r.Findings = append(s.r.Findings, Finding{Secret: name, Addr: off + uint64(i), Len: l, Offset: soff,
				Whole: l == len(s.ix.secrets[sec]), Mapping: m})
		})
		if got < chunk {
			return true
		}
		prev, havePrev = s.buf[chunk], true
	}
	return true
}

// stop stops process pid and waits (bounded) until every thread of it is
// stopped; the function it returns continues it.
func stop(pid int) (func(), error) {
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		if errors.Is(err, syscall.EPERM) {
			return nil, fmt.Errorf("%w: stop it: %v", ErrNotPermitted, err)
		}
		return nil, fmt.Errorf("memscan: stop process %d: %w", pid, err)
	}
	resume := func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if allStopped(pid) {
			return resume, nil
		}
		if time.Now().After(deadline) {
			resume()
			return nil, fmt.Errorf("memscan: process %d did not stop within 10s", pid)
		}
	}
}

// allStopped reports whether every thread of pid is stopped (state T, or t
// when traced), or the process is gone (nothing left to move).
func allStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return true
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue // the thread exited
		}
		// pid (comm) state ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
			return false
		}
	}
	return true
}

// residentRuns returns the [lo, hi) ranges of m whose pages are present in
// memory or swapped out, from /proc/PID/pagemap (bit 63 present, bit 62
// swapped).
func residentRuns(pagemap *os.File, m Mapping, page uint64) ([][2]uint64, error) {
	var runs [][2]uint64
	const batch = 4096 // pages per pagemap read
	ent := make([]byte, 8*batch)
	for p := m.Start; p < m.End; {
		n := min(uint64(batch), (m.End-p)/page)
		got, err := pagemap.ReadAt(ent[:8*n], int64(p/page*8))
		if got < 8 {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("memscan: pagemap of %s: %w", m, err)
		}
		for i := 0; i+8 <= got; i += 8 {
			e := binary.LittleEndian.Uint64(ent[i:])
			addr := p + uint64(i/8)*page
			if e&(3<<62) == 0 {
				continue
			}
			if k := len(runs) - 1; k >= 0 && runs[k][1] == addr {
				runs[k][1] = addr + page
			} else {
				runs = append(runs, [2]uint64{addr, addr + page})
			}
		}
		p += uint64(got/8) * page
	}
	return runs, nil
}

func readMaps(pid int) ([]Mapping, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("memscan: maps line %q", sc.Text())
		}
		m := Mapping{Start: start, End: end, Perms: fs[1]}
		if len(fs) >= 6 {
			m.Path = strings.Join(fs[5:], " ")
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// index finds runs of the secrets' bytes: every 4-byte window of every
// secret is a candidate start; a filter of 2^16 bits rejects most
// positions with one load, a multiply and a bit test.
type index struct {
	names   []string
	secrets [][]byte
	min     []int // shortest reported run per secret
	longest int
	filter  [1 << 16 / 64]uint64
	grams   map[uint32][]loc
}

type loc struct{ sec, off int }

const gram = 4

func hash(v uint32) uint32 { return (v * 0x9E3779B1) >> 16 }

func newIndex(secrets map[string][]byte) (*index, error) {
	ix := &index{grams: map[uint32][]loc{}}
	names := make([]string, 0, len(secrets))
	for n := range secrets {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, n := range names {
		s := secrets[n]
		if len(s) < gram {
			return nil, fmt.Errorf("memscan: secret %q is shorter than %d bytes", n, gram)
		}
		ix.names = append(ix.names, n)
		ix.secrets = append(ix.secrets, s)
		ix.min = append(ix.min, min(MinRun, len(s)))
		ix.longest = max(ix.longest, len(s))
		for off := 0; off+gram <= len(s); off++ {
			v := binary.LittleEndian.Uint32(s[off:])
			ix.grams[v] = append(ix.grams[v], loc{i, off})
			h := hash(v)
			ix.filter[h/64] |= 1 << (h % 64)
		}
	}
	if len(ix.names) == 0 {
		return nil, errors.New("memscan: no secrets")
	}
	return ix, nil
}

// search reports every run that starts at buf[1:1+limit]; buf[0] is the
// byte before (valid when havePrev) and buf may extend past limit so runs
// near the end are seen whole. found gets the run's position relative to
// buf[1], the secret, the run's offset in the secret and its length.
func (ix *index) search(buf []byte, havePrev bool, limit int, found func(i, sec, off, n int)) {
	data := buf[1:]
	for i := 0; i < limit && i+gram <= len(data); i++ {
		v := binary.LittleEndian.Uint32(data[i:])
		h := hash(v)
		if ix.filter[h/64]&(1<<(h%64)) == 0 {
			continue
		}
		for _, l := range ix.grams[v] {
			s := ix.secrets[l.sec]
			// Report a run only where it starts: not if the byte before
			// continues it.
			if l.off > 0 && (i > 0 || havePrev) && buf[i] == s[l.off-1] {
				continue
			}
			n := gram
			for l.off+n < len(s) && i+n < len(data) && data[i+n] == s[l.off+n] {
				n++
			}
			if n >= ix.min[l.sec] {
				found(i, l.sec, l.off, n)
			}
		}
	}
}
