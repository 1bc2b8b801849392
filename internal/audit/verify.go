package audit

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Kind classifies what Verify found wrong.
type Kind string

// Kinds of verification failure.
const (
	// KindModified: a record's hash does not match its content, its
	// prev_hash does not chain, or a complete line is not a valid record.
	KindModified Kind = "modified"
	// KindDeleted: a sequence number is missing (Seq is the first missing one).
	KindDeleted Kind = "deleted"
	// KindInserted: an extra record, e.g. a duplicated sequence number.
	KindInserted Kind = "inserted"
	// KindReordered: a record appears later than a record that should follow
	// it (Seq is the sequence number found later than where it belongs).
	KindReordered Kind = "reordered"
	// KindTruncated: the log ends before a signed checkpoint or the external
	// anchor, or the hash at the anchor's sequence differs.
	KindTruncated Kind = "truncated"
	// KindBadSignature: a checkpoint, the anchor or the prune marker does not
	// verify (or cannot be parsed).
	KindBadSignature Kind = "bad-signature"
	// KindCheckpointMismatch: a validly signed checkpoint (or prune marker)
	// names a different hash than the records have at that sequence.
	KindCheckpointMismatch Kind = "checkpoint-mismatch"
	// KindMissing: a replica published a signed checkpoint of its chain but
	// its audit directory was not among those verified together (or holds
	// no chain at all), or a record names another replica than the chain
	// it is in (VerifyReplicas).
	KindMissing Kind = "missing"
	// KindStoreRolledBack: a record carries a lower store revision than an
	// earlier one: the metadata store was put back to an older copy while
	// the log went on.
	KindStoreRolledBack Kind = "store-rolled-back"
)

// VerifyError names the first problem Verify found. Segment is a file name in
// the log directory (or "anchor"); Line is 1-based within it.
type VerifyError struct {
	Seq     uint64
	Segment string
	Line    int
	Kind    Kind
	Reason  string
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("audit: verify: %s at seq %d (%s line %d): %s", e.Kind, e.Seq, e.Segment, e.Line, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true for every verification failure.
func (e *VerifyError) Unwrap() error { return ErrCorrupt }

// TornTail is an unterminated final line: a write that was never
// acknowledged (see the package doc). It is reported, not treated as tampering.
type TornTail struct {
	Segment string
	Bytes   int64
}

// Report summarises a verification. On failure it covers what was read
// before the first problem.
type Report struct {
	Segments           int
	Records            uint64
	FirstSeq, LastSeq  uint64
	Head               Digest      // hash of LastSeq
	Checkpoints        int         // checkpoints whose signatures verified
	CheckpointsMatched int         // checkpoints checked against the records
	CheckpointsPruned  int         // checkpoints for records removed by Prune
	LastCheckpoint     *Checkpoint // highest checkpoint matched against the records
	AnchorChecked      bool        // the anchor's sequence was present and matched
	Pruned             *PruneMarker
	TornTails          []TornTail
}

type anchorRef struct {
	cp   Checkpoint
	file string
	line int
	kind Kind // what a mismatch is reported as
}

// Verify checks a log directory offline with only the audit public key. It
// checks every checkpoint's and the prune marker's signature, then walks the
// chain and stops at the first problem, returned as a *VerifyError together
// with the partial report. anchor, if non-nil, is a checkpoint kept outside
// the directory: a log that ends before it, or differs at its sequence, is
// reported as KindTruncated. Other errors are I/O errors.
func Verify(dir string, pub crypto.PublicKey, anchor *Checkpoint) (*Report, error) {
	return verify(dir, pub, anchor, span{})
}

// VerifyFrom is Verify for a directory whose records up to anchor are
// already vouched for: it checks every checkpoint's and the prune marker's
// signature as Verify does, but walks the chain only from the anchor's
// record to the end, so its cost does not grow with the age of the log.
// The anchor's record must be where its sequence number puts it, hash to
// the anchor's head and chain on from there. Every record's hash covers its
// predecessor's, so the anchor pins the hashes of all earlier records, but
// their content is not re-read here: an edit to a record before the anchor
// that keeps the stored hashes is found by Verify (and VerifyUpTo), not by
// VerifyFrom.
func VerifyFrom(dir string, pub crypto.PublicKey, anchor *Checkpoint) (*Report, error) {
	if anchor == nil || anchor.Seq == 0 {
		return verify(dir, pub, anchor, span{})
	}
	return verify(dir, pub, anchor, span{from: anchor.Seq})
}

// VerifyUpTo is Verify of the records up to and including the anchor's,
// which must be the last one read: records appended after it (by a log
// that is open and writing) are not read, and checkpoints beyond it are
// checked for their signatures only. It is how a running custodyd checks,
// in the background, the part of its log that VerifyFrom did not read at
// start.
// It stops early with ctx's error when ctx is done.
func VerifyUpTo(ctx context.Context, dir string, pub crypto.PublicKey, anchor *Checkpoint) (*Report, error) {
	if anchor == nil || anchor.Seq == 0 {
		return nil, errors.New("audit: verify up to: no anchor")
	}
	return verify(dir, pub, anchor, span{until: anchor.Seq, ctx: ctx})
}

// span limits the walk of the chain: from the record numbered from (its
// prev_hash taken as given; 0 means the start of the log) to the record
// numbered until (0 means the end of the log).
type span struct {
	from, until uint64
	replica     string          // with it set, every record that names a replica (format 2) must name that one
	ctx         context.Context // if set, the walk stops with its error once it is done
}

// verify is Verify over the records sp selects.
func verify(dir string, pub crypto.PublicKey, anchor *Checkpoint, sp span) (*Report, error) {
	rep := &Report{}
	var refs []anchorRef
	torn, err := scanCheckpoints(dir, func(cp Checkpoint, line int) error {
		if cp.Verify(pub) != nil {
			return &VerifyError{Seq: cp.Seq, Segment: checkpointsFile, Line: line, Kind: KindBadSignature,
				Reason: "checkpoint signature does not verify"}
		}
		refs = append(refs, anchorRef{cp: cp, file: checkpointsFile, line: line, kind: KindCheckpointMismatch})
		return nil
	})
	if err != nil {
		return rep, err
	}
	if torn > 0 {
		rep.TornTails = append(rep.TornTails, TornTail{Segment: checkpointsFile, Bytes: torn})
	}
	rep.Checkpoints = len(refs)
	if anchor != nil {
		if anchor.Verify(pub) != nil {
			return rep, &VerifyError{Seq: anchor.Seq, Segment: "anchor", Kind: KindBadSignature,
				Reason: "anchor signature does not verify"}
		}
		refs = append(refs, anchorRef{cp: *anchor, file: "anchor", kind: KindTruncated})
	}
	marker, err := readPruneMarker(dir)
	if err != nil {
		return rep, err
	}
	if marker != nil && marker.Verify(pub) != nil {
		return rep, &VerifyError{Seq: marker.FirstSeq, Segment: prunedFile, Line: 1, Kind: KindBadSignature,
			Reason: "prune marker signature does not verify"}
	}
	rep.Pruned = marker
	bySeq := map[uint64][]anchorRef{}
	for _, r := range refs {
		bySeq[r.cp.Seq] = append(bySeq[r.cp.Seq], r)
	}

	segs, err := listSegments(dir)
	if err != nil {
		return rep, err
	}
	v := &chainVerifier{dir: dir, segs: segs, rep: rep, marker: marker, bySeq: bySeq, span: sp,
		fromSeg: segmentOf(segs, sp.from), untilSeg: segmentOf(segs, sp.until)}
	if err := v.run(); err != nil {
		return rep, err
	}

	// Whatever is signed beyond the end of the records was cut off.
	for _, r := range refs {
		switch {
		case sp.until > 0 && r.cp.Seq > sp.until && r.file != "anchor":
			// Beyond what was asked for: its signature was checked above.
		case r.cp.Seq > rep.LastSeq:
			return rep, &VerifyError{Seq: rep.LastSeq + 1, Segment: r.file, Line: r.line, Kind: KindTruncated,
				Reason: fmt.Sprintf("log ends at %d before signed checkpoint %d", rep.LastSeq, r.cp.Seq)}
		case rep.Records > 0 && r.cp.Seq+1 < rep.FirstSeq:
			if r.file == checkpointsFile {
				rep.CheckpointsPruned++
			}
		}
	}
	return rep, nil
}

type chainVerifier struct {
	dir    string
	segs   []segment
	rep    *Report
	marker *PruneMarker
	bySeq  map[uint64][]anchorRef
	span

	started  bool
	done     bool // the record numbered until was read
	fromSeg  int  // segmentOf(segs, from): the walk starts there
	untilSeg int  // segmentOf(segs, until): where VerifyFrom reads the record numbered until
	expected uint64
	prev     []byte
	// storeRev is the highest store revision a record carried so far, in
	// record storeRevAt; storeRevs, whether any record carried one.
	storeRev, storeRevAt uint64
	storeRevs            bool
}

func (v *chainVerifier) run() error {
	for si, s := range v.segs {
		if v.from > 0 && si < v.fromSeg {
			continue // the record numbered from is in a later segment
		}
		if err := v.segment(si, s); err != nil {
			return err
		}
		if v.done {
			return nil
		}
	}
	return nil
}

func (v *chainVerifier) segment(si int, s segment) error {
	f, err := os.Open(filepath.Join(v.dir, s.name))
	if err != nil {
		return err
	}
	defer f.Close()
	v.rep.Segments++
	lr := newLineReader(f, 0)
	for n := 1; ; n++ {
		line, start, complete, err := lr.next()
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if err != nil || !complete {
			// The data ends here: at the end of the file, at an unterminated
			// line, or at a preallocated zero tail. Written bytes beyond it
			// were never acknowledged (a torn write).
			if v.until > 0 {
				// The records up to until are what is asked for: bytes
				// after a segment's data are not looked for (a scan of a
				// huge, sparse tail must not hold the check up).
				return nil
			}
			end, err := writtenEnd(f, start)
			if err != nil {
				return err
			}
			if end > start {
				v.rep.TornTails = append(v.rep.TornTails, TornTail{Segment: s.name, Bytes: end - start})
			}
			return nil
		}
		if v.ctx != nil && n%1024 == 1 {
			if err := v.ctx.Err(); err != nil {
				return err
			}
		}
		if !v.started && v.from > s.first+uint64(n-1) {
			continue // before the record numbered from: pinned by its hash, not re-read
		}
		fail := func(seq uint64, k Kind, format string, args ...any) error {
			return &VerifyError{Seq: seq, Segment: s.name, Line: n, Kind: k, Reason: fmt.Sprintf(format, args...)}
		}
		want := v.expected
		if !v.started {
			want = s.first
		}
		r, err := parseRecord(line)
		if err != nil {
			return fail(want, KindModified, "line is not a valid record")
		}
		if !bytes.Equal(computeHash(r), r.Hash) {
			seq := r.Seq
			if v.started && seq != v.expected {
				seq = v.expected
			}
			return fail(seq, KindModified, "record hash does not match its content")
		}
		if v.replica != "" && r.Replica != "" && r.Replica != v.replica {
			return fail(r.Seq, KindMissing, "record of replica %q in the chain of replica %q", r.Replica, v.replica)
		}
		switch {
		case r.Format >= recordFormatStoreRev:
			if r.StoreRev < v.storeRev {
				return fail(r.Seq, KindStoreRolledBack, "store revision %d, below the %d of record %d: the store was put back to an older copy while the log went on", r.StoreRev, v.storeRev, v.storeRevAt)
			}
			v.storeRev, v.storeRevAt, v.storeRevs = r.StoreRev, r.Seq, true
		case v.storeRevs:
			// custodyd never goes back to a format without the store
			// revision: such a record would hide the revision it was
			// written at.
			return fail(r.Seq, KindModified, "record format %d after record %d of format %d: a record without its store revision", r.Format, v.storeRevAt, recordFormatStoreRev)
		}
		if !v.started {
			switch {
			case v.from > 0:
				if r.Seq != v.from {
					return fail(v.from, KindModified, "line %d holds record %d, not %d: records before it were deleted, inserted or reordered", n, r.Seq, v.from)
				}
				// Its prev_hash is taken as given: the anchor at v.from,
				// checked below, vouches for it.
			case r.Seq == 1:
				if !bytes.Equal(r.PrevHash, make([]byte, HashSize)) {
					return fail(1, KindModified, "first record's prev_hash is not zero")
				}
			case v.marker != nil && r.Seq <= v.marker.FirstSeq:
				// Earlier records were pruned; the signed marker (checked
				// when the chain reaches FirstSeq) vouches for the start.
			default:
				first := uint64(1)
				if v.marker != nil {
					first = v.marker.FirstSeq
				}
				return fail(first, KindDeleted, "log starts at %d", r.Seq)
			}
			v.started = true
			v.rep.FirstSeq = r.Seq
			for _, a := range v.bySeq[r.Seq-1] {
				if r.Seq > 1 && !bytes.Equal(a.cp.Head, r.PrevHash) {
					return v.mismatch(a, r.Seq-1, s.name, n)
				}
				v.matched(a)
			}
		} else {
			switch {
			case r.Seq == v.expected:
				if !bytes.Equal(r.PrevHash, v.prev) {
					return fail(r.Seq, KindModified, "prev_hash does not chain to record %d", r.Seq-1)
				}
			case r.Seq > v.expected:
				found, err := v.appearsLater(si, lr.off, v.expected)
				if err != nil {
					return err
				}
				if found {
					return fail(v.expected, KindReordered, "record %d appears after record %d", v.expected, r.Seq)
				}
				return fail(v.expected, KindDeleted, "records %d to %d are missing", v.expected, r.Seq-1)
			default:
				return fail(r.Seq, KindInserted, "sequence %d appears again after %d", r.Seq, v.expected-1)
			}
		}
		if v.marker != nil && r.Seq == v.marker.FirstSeq && !bytes.Equal(r.PrevHash, v.marker.PrevHash) {
			return fail(r.Seq, KindCheckpointMismatch, "prev_hash differs from the signed prune marker")
		}
		for _, a := range v.bySeq[r.Seq] {
			if !bytes.Equal(a.cp.Head, r.Hash) {
				return v.mismatch(a, r.Seq, s.name, n)
			}
			v.matched(a)
		}
		v.prev, v.expected = r.Hash, r.Seq+1
		v.rep.Records++
		v.rep.LastSeq, v.rep.Head = r.Seq, r.Hash
		if v.until > 0 && r.Seq >= v.until {
			// VerifyFrom read the record numbered until, and what follows
			// it, from the line its number gives in the last segment named
			// at or before it. This walk must reach that same line, or the
			// two walks read different copies (a segment that overlaps
			// another, or one renamed) and records between them are read
			// by neither.
			if r.Seq == v.until && (si != v.untilSeg || uint64(n) != v.until-s.first+1) {
				at := "no segment"
				if v.untilSeg >= 0 {
					at = fmt.Sprintf("%s line %d", v.segs[v.untilSeg].name, v.until-v.segs[v.untilSeg].first+1)
				}
				return fail(r.Seq, KindInserted, "record %d is line %d of %s, but a start reads it at %s: segments overlap or were renamed", r.Seq, n, s.name, at)
			}
			v.done = true
			return nil
		}
	}
}

// segmentOf is the index in segs of the segment a record numbered seq is
// read in (the last one named at or before it), or -1 if there is none.
func segmentOf(segs []segment, seq uint64) int {
	at := -1
	for i, s := range segs {
		if s.first <= seq {
			at = i
		}
	}
	return at
}

func (v *chainVerifier) mismatch(a anchorRef, seq uint64, seg string, line int) error {
	reason := "signed checkpoint names a different hash"
	if a.kind == KindTruncated {
		reason = "anchor names a different hash: the log was cut and rewritten"
	}
	return &VerifyError{Seq: seq, Segment: seg, Line: line, Kind: a.kind, Reason: reason}
}

func (v *chainVerifier) matched(a anchorRef) {
	if a.file == "anchor" {
		v.rep.AnchorChecked = true
		return
	}
	v.rep.CheckpointsMatched++
	if v.rep.LastCheckpoint == nil || a.cp.Seq >= v.rep.LastCheckpoint.Seq {
		cp := a.cp
		v.rep.LastCheckpoint = &cp
	}
}

// appearsLater reports whether a record with sequence seq occurs after offset
// off of segment si; it tells a reordering from a deletion.
func (v *chainVerifier) appearsLater(si int, off int64, seq uint64) (bool, error) {
	for i := si; i < len(v.segs); i++ {
		f, err := os.Open(filepath.Join(v.dir, v.segs[i].name))
		if err != nil {
			return false, err
		}
		start := int64(0)
		if i == si {
			start = off
		}
		lr := newLineReader(f, start)
		for {
			line, _, complete, err := lr.next()
			if err != nil || !complete {
				break
			}
			if r, err := parseRecord(line); err == nil && r.Seq == seq {
				f.Close()
				return true, nil
			}
		}
		f.Close()
	}
	return false, nil
}
