package audit

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options configure a Log. The zero value is usable.
type Options struct {
	// SegmentSize is the size after which a new segment is started
	// (default 64 MiB). A batch may overshoot it. Each segment is
	// preallocated to this size when it is created.
	SegmentSize int64
	// CheckpointEvery signs a checkpoint after this many records (default
	// 1000). Requests made while a checkpoint is being signed coalesce into
	// one checkpoint of the newest head.
	CheckpointEvery uint64
	// CheckpointInterval signs a checkpoint this often if there are new
	// records (default 1 minute; negative disables the timer).
	CheckpointInterval time.Duration
	// InstanceID names this custodyd instance in checkpoints (default: host name).
	InstanceID string
	// Replica, if set, names this custodyd replica in every record (format
	// 2); custodyd sets it and InstanceID to its replica_id.
	Replica string
	// Sink, if set, receives every checkpoint off the Append path.
	Sink AnchorSink
	// StoreRevision, if set, is the metadata store's anchor revision; every
	// checkpoint records it, and a change of it is checkpointed within about
	// a second, so a rolled-back store is caught at start.
	StoreRevision func() uint64
	// SinkTimeout bounds one Sink.Anchor call (default 10 s).
	SinkTimeout time.Duration
	// MaxBatch bounds the records in one group commit (default 1024).
	MaxBatch int
	// Logger receives operational messages (never record contents).
	// Default: slog.Default().
	Logger *slog.Logger

	// DisableGroupCommit makes every record its own write and fsync. It
	// exists only for benchmarks that measure what group commit buys; never
	// set it in production.
	DisableGroupCommit bool
	// DisablePreallocation makes segments grow as they are written, so that
	// every flush also writes the file's new size. It exists only for
	// benchmarks that measure what preallocation buys.
	DisablePreallocation bool
}

func (o *Options) setDefaults() {
	if o.SegmentSize <= 0 {
		o.SegmentSize = 64 << 20
	}
	if o.CheckpointEvery == 0 {
		o.CheckpointEvery = 1000
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = time.Minute
	}
	if o.InstanceID == "" {
		o.InstanceID, _ = os.Hostname()
	}
	if o.SinkTimeout <= 0 {
		o.SinkTimeout = 10 * time.Second
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1024
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Stats are counters since Open. Fsyncs counts segment flushes (fdatasync)
// only, so Records/Fsyncs is the mean group-commit batch size.
type Stats struct {
	Records          uint64 // records made durable
	Batches          uint64 // group commits (flushes) that succeeded
	Fsyncs           uint64 // segment flushes attempted
	Failures         uint64 // appends failed with ErrUnavailable
	Checkpoints      uint64 // checkpoints signed and written
	CheckpointErrors uint64 // checkpoints that could not be signed or written
	Anchored         uint64 // checkpoints accepted by the sink
	AnchorErrors     uint64 // sink failures, including a full sink queue
	TornBytes        uint64 // bytes of torn tail truncated by Open
}

type counters struct {
	records, batches, fsyncs, failures, checkpoints, checkpointErrors,
	anchored, anchorErrors, tornBytes atomic.Uint64
}

type appendResult struct {
	seq uint64
	err error
}

// appendReq is one Append (rec) or AppendBatch (recs) waiting for its
// group commit. The writer sets first, the sequence number of its first
// record.
type appendReq struct {
	rec   Record
	recs  []Record
	first uint64
	done  chan appendResult
}

func (q *appendReq) len() int {
	if q.recs != nil {
		return len(q.recs)
	}
	return 1
}

func (q *appendReq) record(i int) *Record {
	if q.recs != nil {
		return &q.recs[i]
	}
	return &q.rec
}

// reqPool recycles the requests of Appends that received their result (a
// request whose caller gave up may still be in the writer's hands).
var reqPool = sync.Pool{New: func() any { return &appendReq{done: make(chan appendResult, 1)} }}

// syncItem is what the writer hands the syncer: a batch written to seg and
// not yet flushed, or, with barrier set, a request to be told (by closing
// barrier) once everything handed over before it is flushed or failed.
type syncItem struct {
	reqs     []*appendReq
	records  int
	seg      *os.File
	segFirst uint64
	segPath  string
	segInfo  os.FileInfo
	end      int64  // offset in seg after this batch
	nextSeq  uint64 // sequence number after this batch's last record
	head     []byte // hash of this batch's last record
	barrier  chan struct{}
}

// Log is an open audit log directory. It is safe for concurrent use. Only
// one Log may have a directory open at a time (Open takes a lock on dir/LOCK
// and returns ErrLocked otherwise).
type Log struct {
	dir    string
	signer crypto.Signer
	pub    crypto.PublicKey
	opts   Options
	log    *slog.Logger
	stats  counters

	closeMu sync.RWMutex // held shared while sending to reqs
	closed  bool
	reqs    chan *appendReq

	writerDone chan struct{}
	// Owned by the writer goroutine.
	seg      *os.File
	segFirst uint64
	segPath  string
	segInfo  os.FileInfo
	segSize  int64 // bytes written to seg (durable once the syncer has flushed them)
	segAlloc int64 // seg's file size: from segSize on, preallocated zeros
	broken   bool  // seg had a failed write or flush and must be cut back and replaced
	// preallocWarned: a failed preallocation was logged (until one succeeds)
	preallocWarned bool
	wSeq           uint64
	wHead          []byte
	// wStoreRev is the store revision the last record written carries
	// (format 3; Options.StoreRevision): records never go below it.
	wStoreRev uint64
	// openedStoreRev is the store revision of the last record when the log
	// was opened (OpenedStoreRevision).
	openedStoreRev uint64
	enc            recordEncoder
	buf            []byte

	// The syncer goroutine flushes what the writer wrote (see runSyncer).
	syncQ      chan syncItem
	syncerDone chan struct{}
	syncBroken atomic.Bool // a flush failed; set by the syncer, cleared by the writer once it cut the segment back
	// Owned by the syncer; the writer reads them only after a barrier.
	dSeg     *os.File // the segment of the last successful flush
	dSize    int64    // bytes of dSeg durable
	lastKick uint64

	mu          sync.Mutex // protects the published head below
	nextSeq     uint64
	head        []byte
	activeFirst uint64
	health      error
	notify      chan struct{} // closed and replaced on every commit

	ckptMu     sync.Mutex // serialises checkpoints; protects latest, ckptClosed
	latest     *Checkpoint
	ckptClosed bool
	ckptKick   chan struct{}
	ckptStop   chan struct{}
	ckptDone   chan struct{}

	sinkQ      chan Checkpoint
	sinkCancel context.CancelFunc
	sinkDone   chan struct{}

	pruneMu sync.Mutex
	lock    *os.File

	// condemned, once set by Condemn, fails every later append and
	// checkpoint: the directory was found rewritten.
	condemned atomic.Pointer[error]
}

// Open opens (creating if needed) the log in dir and continues its chain from
// the last record of the last segment. signer signs checkpoints and prune
// markers; it is the HSM audit key in production (ECDSA P-256).
func Open(ctx context.Context, dir string, signer crypto.Signer, opts Options) (*Log, error) {
	if signer == nil {
		return nil, errors.New("audit: open: signer is nil")
	}
	opts.setDefaults()
	l := &Log{
		dir: dir, signer: signer, pub: signer.Public(), opts: opts, log: opts.Logger,
		reqs:       make(chan *appendReq, opts.MaxBatch),
		writerDone: make(chan struct{}),
		syncQ:      make(chan syncItem, 64),
		syncerDone: make(chan struct{}),
		notify:     make(chan struct{}),
		ckptKick:   make(chan struct{}, 1),
		ckptStop:   make(chan struct{}),
		ckptDone:   make(chan struct{}),
		sinkDone:   make(chan struct{}),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	l.lock = lock
	if err := l.openExisting(); err != nil {
		if l.seg != nil {
			l.seg.Close()
		}
		lock.Close()
		return nil, err
	}
	l.lastKick = l.wSeq - 1
	l.publish()

	go l.runSyncer()
	go l.runWriter()
	go l.runCheckpointer()
	sinkCtx, cancel := context.WithCancel(context.Background())
	l.sinkCancel = cancel
	if opts.Sink != nil {
		l.sinkQ = make(chan Checkpoint, 64)
		go l.runSink(sinkCtx)
	} else {
		close(l.sinkDone)
	}
	return l, nil
}

func (l *Log) openExisting() error {
	if err := l.loadLatestCheckpoint(); err != nil {
		return err
	}
	if err := l.recoverHead(); err != nil {
		return err
	}
	if l.latest != nil && l.latest.Seq >= l.wSeq {
		return fmt.Errorf("%w: records end at %d, before checkpoint %d", ErrCorrupt, l.wSeq-1, l.latest.Seq)
	}
	return nil
}

func (l *Log) loadLatestCheckpoint() error {
	_, err := scanCheckpoints(l.dir, func(cp Checkpoint, line int) error {
		if cp.Verify(l.pub) != nil {
			l.log.Warn("audit: ignoring checkpoint with bad signature", "line", line, "seq", cp.Seq)
			return nil
		}
		if l.latest == nil || cp.Seq >= l.latest.Seq {
			c := cp
			l.latest = &c
		}
		return nil
	})
	var ve *VerifyError
	if errors.As(err, &ve) {
		return fmt.Errorf("%w: %s line %d: %s", ErrCorrupt, ve.Segment, ve.Line, ve.Reason)
	}
	if err != nil {
		return fmt.Errorf("%w: read checkpoints: %w", ErrUnavailable, err)
	}
	return nil
}

// recoverHead finds the last record, truncates a torn tail of the last
// segment, and opens the segment to append to.
func (l *Log) recoverHead() error {
	segs, err := listSegments(l.dir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	l.wSeq, l.wHead = 1, make([]byte, HashSize)
	if m, err := readPruneMarker(l.dir); err == nil && m != nil {
		l.wSeq, l.wHead = m.FirstSeq, m.PrevHash
	}
	for i := len(segs) - 1; i >= 0; i-- {
		path := filepath.Join(l.dir, segs[i].name)
		rec, end, written, _, err := lastRecord(path)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		// Written bytes after the last record were never acknowledged (a
		// torn write). A tail of zeros is preallocated space, kept.
		if i == len(segs)-1 && written > end {
			if err := truncateFile(path, end); err != nil {
				return fmt.Errorf("%w: truncate torn tail: %w", ErrUnavailable, err)
			}
			l.stats.tornBytes.Add(uint64(written - end))
			l.log.Warn("audit: truncated torn tail of last segment", "segment", segs[i].name, "bytes", written-end)
		}
		if rec == nil {
			continue
		}
		l.wSeq, l.wHead = rec.Seq+1, rec.Hash
		l.wStoreRev, l.openedStoreRev = rec.StoreRev, rec.StoreRev
		if rec.Format < recordFormatStoreRev {
			// custodyd does not go back to a format without the store
			// revision: take the newest one an earlier record carries, so
			// that a record appended without one cannot lower it.
			rev, err := newestStoreRev(l.dir, segs[:i+1])
			if err != nil {
				return fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			l.wStoreRev, l.openedStoreRev = rev, rev
		}
		if i == len(segs)-1 {
			f, err := os.OpenFile(path, os.O_RDWR, 0o600)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			fi, err := f.Stat()
			if err != nil {
				f.Close()
				return fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			l.seg, l.segFirst, l.segPath, l.segInfo, l.segSize, l.segAlloc = f, segs[i].first, path, fi, end, fi.Size()
			l.dSeg, l.dSize = f, end
			if err := l.preallocate(); err != nil {
				f.Close()
				l.seg = nil
				return fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			return nil
		}
		break
	}
	if err := l.openSegment(l.wSeq); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

func truncateFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}

// openSegment creates the segment for first (or reuses a file of that name
// that holds no record: one left by a failed first batch, or preallocated
// and never written), preallocates it and makes its directory entry durable.
func (l *Log) openSegment(first uint64) error {
	path := segPath(l.dir, first)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() != 0 {
		// Records start at offset 0 and are flushed before they count, so
		// a file whose first byte is zero holds none.
		var b [1]byte
		if _, rerr := f.ReadAt(b[:], 0); rerr != nil || b[0] != 0 {
			err = fmt.Errorf("segment %s already exists and is not empty", segmentName(first))
		} else {
			err = f.Truncate(0)
		}
	}
	if err == nil {
		l.seg, l.segFirst, l.segPath, l.segInfo, l.segSize, l.segAlloc = f, first, path, fi, 0, 0
		l.dSeg, l.dSize = f, 0
		err = l.preallocate()
	}
	if err == nil {
		err = syncDir(l.dir)
	}
	if err != nil {
		f.Close()
		l.seg, l.dSeg = nil, nil
		return err
	}
	return nil
}

// preallocate extends the active segment with zeros to SegmentSize
// (fallocate) and flushes that, so that a batch written inside it needs
// only its data flushed (fdatasync), not the file's size. Where the file
// system cannot (no support, or no space for a whole segment) the segment
// grows as it is written, as before: only the speed differs. An error is
// returned only if the segment cannot be made consistent again.
func (l *Log) preallocate() error {
	want := l.opts.SegmentSize
	if l.opts.DisablePreallocation || l.segAlloc >= want || l.segSize >= want {
		return nil
	}
	if err := preallocate(l.seg, l.segAlloc, want-l.segAlloc); err != nil {
		// Said once, not once per attempt while a disk stays full.
		if !errors.Is(err, errors.ErrUnsupported) && !l.preallocWarned {
			l.preallocWarned = true
			l.log.Warn("audit: cannot preallocate segment; it grows as it is written", "segment", segmentName(l.segFirst), "err", err)
		}
		// A failed fallocate may have allocated part of the range: cut
		// the file back to what is written so nothing is left half-done.
		if err := l.seg.Truncate(l.segSize); err != nil {
			return err
		}
		l.segAlloc = l.segSize
		return l.seg.Sync()
	}
	l.segAlloc, l.preallocWarned = want, false
	return l.seg.Sync()
}

// trim cuts the active segment's preallocated tail off (at rotation and
// Close), so that a finished segment is only its JSON lines.
func (l *Log) trim() error {
	if l.segAlloc <= l.segSize {
		return nil
	}
	if err := l.seg.Truncate(l.segSize); err != nil {
		return err
	}
	l.segAlloc = l.segSize
	return l.seg.Sync()
}

// publish makes the writer's durable head visible to readers.
func (l *Log) publish() {
	l.mu.Lock()
	l.nextSeq, l.head, l.activeFirst = l.wSeq, l.wHead, l.segFirst
	l.mu.Unlock()
}

// Append writes rec durably and returns its sequence number. It returns only
// after the record is fsynced, or with an error: ErrInvalidRecord (nothing
// written), ErrUnavailable (the log cannot be written; fail the request),
// ErrClosed, or the context's error. A context that ends after the record was
// queued does not withdraw it: the record may still be written.
func (l *Log) Append(ctx context.Context, rec Record) (uint64, error) {
	rec.Replica = l.opts.Replica
	if err := normalise(&rec, time.Now()); err != nil {
		return 0, err
	}
	req := reqPool.Get().(*appendReq)
	req.rec = rec
	seq, err, done := l.submit(ctx, req)
	if done {
		req.rec = Record{}
		reqPool.Put(req)
	}
	return seq, err
}

// AppendBatch writes recs durably as consecutive records in one group
// commit and returns the sequence number of the first. It returns only
// after all of them are fsynced; on an error none of them is acknowledged
// (errors as for Append; an invalid record fails the whole call before
// anything is written).
func (l *Log) AppendBatch(ctx context.Context, recs []Record) (uint64, error) {
	if len(recs) == 0 {
		return 0, fmt.Errorf("%w: empty batch", ErrInvalidRecord)
	}
	rs := slices.Clone(recs)
	now := time.Now()
	for i := range rs {
		if err := normalise(&rs[i], now); err != nil {
			return 0, err
		}
	}
	seq, err, _ := l.submit(ctx, &appendReq{recs: rs, done: make(chan appendResult, 1)})
	return seq, err
}

// submit queues req for the writer and waits for its result. done reports
// whether the result was received (the writer is finished with req).
func (l *Log) submit(ctx context.Context, req *appendReq) (seq uint64, err error, done bool) {
	if c := l.condemned.Load(); c != nil {
		l.stats.failures.Add(uint64(req.len()))
		return 0, *c, true
	}
	l.closeMu.RLock()
	if l.closed {
		l.closeMu.RUnlock()
		return 0, ErrClosed, true
	}
	select {
	case l.reqs <- req:
		l.closeMu.RUnlock()
	case <-ctx.Done():
		l.closeMu.RUnlock()
		return 0, ctx.Err(), true
	}
	select {
	case res := <-req.done:
		return res.seq, res.err, true
	case <-ctx.Done():
		return 0, ctx.Err(), false
	}
}

// runWriter is the first stage of the group commit: it takes every request
// queued, chains and encodes their records into one buffer, writes it into
// the preallocated segment and hands the batch to the syncer, then goes
// straight on to the next batch while the syncer flushes this one.
func (l *Log) runWriter() {
	defer close(l.writerDone)
	for req := range l.reqs {
		batch := []*appendReq{req}
	fill:
		for !l.opts.DisableGroupCommit && len(batch) < l.opts.MaxBatch {
			select {
			case r, ok := <-l.reqs:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		l.write(batch)
		if l.opts.DisableGroupCommit {
			l.barrier() // one record, one write, one flush
		}
	}
	// Closed: let the syncer finish, then leave the active segment cut
	// back to what is durable.
	l.barrier()
	close(l.syncQ)
	<-l.syncerDone
	if l.seg != nil {
		if err := l.cutBack(); err != nil {
			l.log.Error("audit: closing the active segment", "segment", segmentName(l.segFirst), "err", err)
		}
		l.seg.Close()
		l.seg = nil
	}
}

// write chains, encodes and writes one batch and hands it to the syncer.
func (l *Log) write(batch []*appendReq) {
	if err := l.ensureSegment(); err != nil {
		l.fail(batch, err)
		return
	}
	n := 0
	for _, req := range batch {
		n += req.len()
	}
	// One allocation per batch holds the batch's hashes; they stay
	// referenced as prev_hash and as the published head.
	hashes := make([]byte, n*HashSize)
	seq, prev := l.wSeq, l.wHead
	if l.opts.StoreRevision != nil {
		l.wStoreRev = max(l.wStoreRev, l.opts.StoreRevision())
	}
	buf := l.buf[:0]
	for _, req := range batch {
		req.first = seq
		for i := range req.len() {
			r := req.record(i)
			r.Seq, r.PrevHash = seq, prev
			if l.opts.StoreRevision != nil {
				r.Format, r.StoreRev = recordFormatStoreRev, l.wStoreRev
			}
			h := l.enc.hash(r)
			r.Hash = hashes[:HashSize:HashSize]
			hashes = hashes[HashSize:]
			copy(r.Hash, h[:])
			buf = appendRecordJSON(buf, r)
			buf = append(buf, '\n')
			prev = r.Hash
			seq++
		}
	}
	if cap(buf) <= 4<<20 {
		l.buf = buf
	}
	if _, err := l.seg.WriteAt(buf, l.segSize); err != nil {
		l.broken = true
		l.fail(batch, err)
		return
	}
	l.segSize += int64(len(buf))
	l.wSeq, l.wHead = seq, prev
	l.syncQ <- syncItem{reqs: batch, records: n, seg: l.seg, segFirst: l.segFirst, segPath: l.segPath, segInfo: l.segInfo,
		end: l.segSize, nextSeq: seq, head: prev}
}

// barrier waits until the syncer has flushed or failed everything the
// writer handed it.
func (l *Log) barrier() {
	done := make(chan struct{})
	l.syncQ <- syncItem{barrier: done}
	<-done
}

// ensureSegment repairs a broken segment and rotates by size.
func (l *Log) ensureSegment() error {
	if l.seg != nil && (l.broken || l.syncBroken.Load() || l.segSize >= l.opts.SegmentSize) {
		l.barrier()
		if l.syncBroken.Load() {
			l.broken = true
		}
		if err := l.cutBack(); err != nil {
			return err
		}
		l.seg.Close()
		l.seg = nil
	}
	if l.seg == nil {
		if err := l.openSegment(l.wSeq); err != nil {
			return err
		}
		l.broken = false
	}
	return nil
}

// cutBack ends the active segment at its last durable batch, through the
// descriptor still held: after a failed write or flush it cuts off whatever
// the failed batches left, and the chain continues from the last durable
// record; otherwise it trims the preallocated tail. Called after a barrier.
func (l *Log) cutBack() error {
	if !l.broken && !l.syncBroken.Load() {
		if err := l.trim(); err != nil {
			return fmt.Errorf("trim segment: %w", err)
		}
		return nil
	}
	keep := int64(0)
	if l.dSeg == l.seg {
		keep = l.dSize
	}
	if err := l.seg.Truncate(keep); err != nil {
		return fmt.Errorf("truncate failed segment: %w", err)
	}
	if err := l.seg.Sync(); err != nil {
		return fmt.Errorf("sync failed segment: %w", err)
	}
	l.segSize, l.segAlloc = keep, keep
	l.mu.Lock()
	l.wSeq, l.wHead = l.nextSeq, l.head
	l.mu.Unlock()
	l.syncBroken.Store(false)
	return nil
}

// runSyncer is the second stage of the group commit: it flushes, with one
// fdatasync, every batch the writer wrote since its last flush, then
// publishes the new head and acknowledges those records. A record is
// acknowledged only after a flush that began after its write returned.
func (l *Log) runSyncer() {
	defer close(l.syncerDone)
	var items []syncItem
	for it := range l.syncQ {
		items = append(items[:0], it)
	drain:
		for !l.opts.DisableGroupCommit {
			select {
			case it, ok := <-l.syncQ:
				if !ok {
					break drain
				}
				items = append(items, it)
			default:
				break drain
			}
		}
		from := 0
		for i, it := range items {
			if it.barrier != nil {
				l.flush(items[from:i])
				close(it.barrier)
				from = i + 1
			}
		}
		l.flush(items[from:])
		clear(items)
	}
}

// flush makes batches durable with one fdatasync and acknowledges them. All
// of them are in one segment: the writer rotates only after a barrier.
func (l *Log) flush(items []syncItem) {
	if len(items) == 0 {
		return
	}
	last := &items[len(items)-1]
	var err error
	if l.syncBroken.Load() {
		// A flush failed earlier: the data these batches follow may be
		// lost, so none of them counts until the writer has cut the
		// segment back.
		err = errors.New("an earlier flush of this segment failed")
	} else {
		l.stats.fsyncs.Add(1)
		err = datasync(last.seg)
		if err == nil {
			err = checkReachable(last.segPath, last.segInfo)
		}
		if err != nil {
			l.syncBroken.Store(true)
		}
	}
	if err != nil {
		for _, it := range items {
			l.fail(it.reqs, err)
		}
		return
	}
	l.dSeg, l.dSize = last.seg, last.end
	records := 0
	for _, it := range items {
		records += it.records
	}
	l.mu.Lock()
	l.nextSeq, l.head, l.activeFirst = last.nextSeq, last.head, last.segFirst
	wasDown := l.health != nil
	l.health = nil
	close(l.notify)
	l.notify = make(chan struct{})
	l.mu.Unlock()
	if wasDown {
		l.log.Info("audit: log writable again", "segment", segmentName(last.segFirst))
	}
	// Count before releasing the callers, so that a caller whose Append has
	// returned always sees its record in Stats.
	l.stats.records.Add(uint64(records))
	l.stats.batches.Add(1)
	for _, it := range items {
		for _, req := range it.reqs {
			req.done <- appendResult{seq: req.first}
		}
	}
	if head := last.nextSeq - 1; head-l.lastKick >= l.opts.CheckpointEvery {
		l.lastKick = head
		select {
		case l.ckptKick <- struct{}{}:
		default:
		}
	}
}

// checkReachable makes sure the segment just flushed is still the file at
// its path: a write to a descriptor whose directory was removed succeeds but
// is not durable in the log.
func checkReachable(path string, info os.FileInfo) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("segment no longer reachable: %w", err)
	}
	if !os.SameFile(fi, info) {
		return fmt.Errorf("segment %s was replaced", filepath.Base(path))
	}
	return nil
}

func (l *Log) fail(batch []*appendReq, cause error) {
	err := fmt.Errorf("%w: %w", ErrUnavailable, cause)
	l.mu.Lock()
	wasUp := l.health == nil
	l.health = err
	l.mu.Unlock()
	if wasUp {
		l.log.Error("audit: log unavailable; failing requests closed", "err", cause)
	}
	n := 0
	for _, req := range batch {
		n += req.len()
	}
	l.stats.failures.Add(uint64(n))
	for _, req := range batch {
		req.done <- appendResult{err: err}
	}
}

// Condemn fails the log closed for good: every later Append, AppendBatch
// and Checkpoint returns an error wrapping ErrUnavailable and cause, and
// Healthy returns it, so that nothing more is served or signed over a
// directory found rewritten (cause says how). Records already durable stay
// as they are. Only a new Open of a directory that verifies undoes it.
func (l *Log) Condemn(cause error) {
	err := fmt.Errorf("%w: %w", ErrUnavailable, cause)
	if l.condemned.CompareAndSwap(nil, &err) {
		l.log.Error("audit: log condemned; failing every request closed", "err", cause)
	}
}

// Healthy returns nil if the last write succeeded, or an error wrapping
// ErrUnavailable and its cause. The next Append retries, so health returns
// once the directory is writable again.
func (l *Log) Healthy() error {
	if c := l.condemned.Load(); c != nil {
		return *c
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.health
}

// Head returns the sequence number and hash of the last durable record (0 and
// the zero hash for an empty log).
func (l *Log) Head() (uint64, []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nextSeq - 1, append([]byte(nil), l.head...)
}

// Stats returns the counters since Open.
func (l *Log) Stats() Stats {
	c := &l.stats
	return Stats{
		Records: c.records.Load(), Batches: c.batches.Load(), Fsyncs: c.fsyncs.Load(),
		Failures: c.failures.Load(), Checkpoints: c.checkpoints.Load(),
		CheckpointErrors: c.checkpointErrors.Load(), Anchored: c.anchored.Load(),
		AnchorErrors: c.anchorErrors.Load(), TornBytes: c.tornBytes.Load(),
	}
}

// OpenedStoreRevision is the store revision the log's last record carried
// when the log was opened (0 for records without one): a store whose
// revision is lower was rolled back after that record was written.
func (l *Log) OpenedStoreRevision() uint64 { return l.openedStoreRev }

// Dir returns the log directory.
func (l *Log) Dir() string { return l.dir }

// LatestCheckpoint returns the most recent checkpoint written or found at Open.
func (l *Log) LatestCheckpoint() (Checkpoint, bool) {
	l.ckptMu.Lock()
	defer l.ckptMu.Unlock()
	if l.latest == nil {
		return Checkpoint{}, false
	}
	return *l.latest, true
}

// Checkpoint signs and writes a checkpoint of the current head now, unless
// the latest checkpoint already covers it, in which case that one is returned.
// It returns ErrNoRecords for an empty log.
func (l *Log) Checkpoint(ctx context.Context) (Checkpoint, error) {
	return l.checkpoint(ctx)
}

func (l *Log) checkpoint(ctx context.Context) (Checkpoint, error) {
	l.ckptMu.Lock()
	defer l.ckptMu.Unlock()
	if l.ckptClosed {
		return Checkpoint{}, ErrClosed
	}
	if c := l.condemned.Load(); c != nil {
		return Checkpoint{}, *c
	}
	if err := ctx.Err(); err != nil {
		return Checkpoint{}, err
	}
	seq, head := l.Head()
	if seq == 0 {
		return Checkpoint{}, ErrNoRecords
	}
	var rev uint64
	if l.opts.StoreRevision != nil {
		rev = l.opts.StoreRevision()
	}
	if l.latest != nil && l.latest.Seq == seq && l.latest.StoreRevision == rev {
		return *l.latest, nil
	}
	cp := Checkpoint{Seq: seq, Head: head, Time: time.Now().UTC().Round(0), InstanceID: l.opts.InstanceID, StoreRevision: rev}
	sig, err := sign(l.signer, cp.signedBytes())
	if errors.Is(err, ErrSignerNotReady) {
		return Checkpoint{}, err
	}
	if err == nil {
		cp.Signature = sig
		if werr := appendLine(filepath.Join(l.dir, checkpointsFile), cp); werr != nil {
			err = fmt.Errorf("%w: write checkpoint: %w", ErrUnavailable, werr)
		}
	}
	if err != nil {
		l.stats.checkpointErrors.Add(1)
		l.log.Error("audit: checkpoint failed", "seq", seq, "err", err)
		return Checkpoint{}, err
	}
	l.latest = &cp
	l.stats.checkpoints.Add(1)
	if l.sinkQ != nil {
		select {
		case l.sinkQ <- cp:
		default:
			l.stats.anchorErrors.Add(1)
			l.log.Warn("audit: anchor queue full; checkpoint not anchored", "seq", cp.Seq)
		}
	}
	return cp, nil
}

// storeCheckpointDelay bounds how long a store change goes without a
// checkpoint recording it.
const storeCheckpointDelay = time.Second

func (l *Log) runCheckpointer() {
	defer close(l.ckptDone)
	var tick, storeTick <-chan time.Time
	if l.opts.CheckpointInterval > 0 {
		t := time.NewTicker(l.opts.CheckpointInterval)
		defer t.Stop()
		tick = t.C
	}
	if l.opts.StoreRevision != nil {
		t := time.NewTicker(storeCheckpointDelay)
		defer t.Stop()
		storeTick = t.C
	}
	for {
		select {
		case <-l.ckptStop:
			return
		case <-l.ckptKick:
		case <-tick:
		case <-storeTick:
			if cp, ok := l.LatestCheckpoint(); ok && cp.StoreRevision == l.opts.StoreRevision() {
				continue
			}
		}
		// Errors are counted and logged inside; ErrNoRecords is normal.
		_, _ = l.checkpoint(context.Background())
	}
}

func (l *Log) runSink(ctx context.Context) {
	defer close(l.sinkDone)
	for cp := range l.sinkQ {
		actx, cancel := context.WithTimeout(ctx, l.opts.SinkTimeout)
		err := l.opts.Sink.Anchor(actx, cp)
		cancel()
		if err != nil {
			l.stats.anchorErrors.Add(1)
			l.log.Warn("audit: anchoring checkpoint failed", "seq", cp.Seq, "err", err)
			continue
		}
		l.stats.anchored.Add(1)
	}
}

// Close stops accepting records, writes everything queued, signs a final
// checkpoint if there are records since the last one, and waits for the sink
// to drain (until ctx ends, when a pending anchor call is cancelled).
func (l *Log) Close(ctx context.Context) error {
	l.closeMu.Lock()
	if l.closed {
		l.closeMu.Unlock()
		return nil
	}
	l.closed = true
	close(l.reqs)
	l.closeMu.Unlock()
	<-l.writerDone
	close(l.ckptStop)
	<-l.ckptDone

	var err error
	if l.Healthy() == nil {
		if _, cerr := l.checkpoint(ctx); cerr != nil && !errors.Is(cerr, ErrNoRecords) && !errors.Is(cerr, ErrSignerNotReady) {
			err = cerr
		}
	}
	l.ckptMu.Lock()
	l.ckptClosed = true
	if l.sinkQ != nil {
		close(l.sinkQ)
	}
	l.ckptMu.Unlock()
	select {
	case <-l.sinkDone:
	case <-ctx.Done():
		l.sinkCancel()
		<-l.sinkDone
	}
	l.sinkCancel()
	l.lock.Close()
	return err
}
