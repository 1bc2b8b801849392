// Package audit is Custody's tamper-evident, durable audit log.
//
// Every request custodyd serves — allowed, denied or failed — becomes one
// Record, appended with (*Log).Append before the request is answered. Records
// never carry plaintext, key material or PINs; an encryption context is
// recorded only as a keyed digest that the server computes.
//
// Invariants:
//
//   - Durable before answered. Append returns a sequence number only after the
//     record's bytes, and every record before it, are flushed (fdatasync) to a
//     segment file that is still reachable under the log directory. If the
//     log cannot be written, Append fails with ErrUnavailable (fail closed)
//     and Healthy reports the cause.
//   - Pipelined group commit, as etcd writes its WAL. A writer goroutine takes
//     every queued request, chains and encodes the records (no reflection, no
//     allocation per record) and writes them with one write; a syncer
//     goroutine flushes, with one fdatasync, everything written since its
//     last flush, then acknowledges it. The next batch is encoded and written
//     while the current one is being flushed. A record is acknowledged only
//     by a flush that began after its write returned.
//   - Preallocated segments. A segment is created at its full size
//     (fallocate) and its size flushed once, so a batch written inside it
//     changes no file size and its flush is a data flush (fdatasync), not an
//     fsync with a metadata update. A finished segment (rotated, or the
//     active one at Close) is cut back to its last record. Where the file
//     system cannot preallocate (or has no room for a whole segment), the
//     segment grows as it is written; fdatasync still flushes its size.
//   - Hash chained. Record n carries prev_hash = hash of record n-1 (32 zero
//     bytes for record 1) and hash = SHA-256(prev_hash || canonical(record n
//     without its hash)). The canonical encoding is a length-prefixed binary
//     form (see canonicalRecord), independent of the JSON text, so that the
//     JSON lines can be re-serialised without changing what is hashed.
//
// # Files
//
// A log directory holds segments named audit-<first seq, 20 digits>.log (JSON
// lines, one record per line, rotated by size; the active segment, and one
// left by a crash, end in a preallocated tail of zero bytes), checkpoints.log (JSON lines of
// signed Checkpoints: sequence, head hash, time, instance id) and, after a
// Prune, pruned.json (a signed PruneMarker naming the first retained record
// and its prev_hash).
//
// # Failure and torn-write rule
//
// A record is acknowledged only after the whole batch containing it,
// including its final newline, has been flushed. Therefore any bytes after the
// last parseable record of a segment were never acknowledged. A segment's
// data ends at its first NUL byte: records are JSON, which never contains
// one, and are written from offset 0 without gaps, so a NUL at a record
// boundary is the start of the preallocated tail — the end of the log, not
// damage. (A crash may leave a torn batch partly on disk inside that tail,
// even after a gap of zeros: those bytes were never acknowledged either.)
// The rules are:
//
//   - When a write or flush fails, the writer marks the segment broken; the
//     next batch first waits for the flushes in flight, then truncates the
//     segment (through the open descriptor) back to the size of its last
//     durable batch and fsyncs it, and then opens a NEW segment named for the
//     next sequence. The chain continues from the last durable record.
//     Batches written after the failed one fail too, even if a later flush
//     succeeds. If truncation fails the log stays unavailable.
//   - On Open, written bytes after the last parseable record of the last
//     segment (up to its last non-zero byte) are truncated (a torn write after
//     a crash); the byte count, never the bytes, is logged and counted in
//     Stats.TornBytes. A tail of zeros alone is kept and written into.
//   - Verify, which never modifies anything, tolerates an unterminated final
//     line of a segment and written bytes after its data's end (a torn write
//     not yet repaired by Open) and lists them in Report.TornTails; a tail of
//     zeros alone is not reported. A complete (newline-terminated) line that
//     is not a valid record is reported as KindModified.
//   - Open refuses (ErrCorrupt) a log whose records end before the sequence of
//     its latest checkpoint: acknowledged records are missing.
//
// # Checkpoints, anchors, pruning
//
// Every Options.CheckpointEvery records or Options.CheckpointInterval, the
// log signs a Checkpoint with the crypto.Signer it was given (the HSM audit
// key), appends it to checkpoints.log and hands it to an optional AnchorSink
// (FileSink, HTTPSink) off the Append path; a sink failure is counted and
// logged, never blocks Append. Prune deletes whole old segments only when the
// latest checkpoint covers them, after writing a PruneMarker signed by the
// same key, so Verify still passes with only the public key.
package audit
