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
//     record's bytes, and every record before it, are fsynced to a segment
//     file that is still reachable under the log directory. Concurrent
//     appenders are group-committed by one writer goroutine: one write and one
//     fsync per batch. If the log cannot be written, Append fails with
//     ErrUnavailable (fail closed) and Healthy reports the cause.
//   - Hash chained. Record n carries prev_hash = hash of record n-1 (32 zero
//     bytes for record 1) and hash = SHA-256(prev_hash || canonical(record n
//     without its hash)). The canonical encoding is a length-prefixed binary
//     form (see canonicalRecord), independent of the JSON text, so that the
//     JSON lines can be re-serialised without changing what is hashed.
//
// # Files
//
// A log directory holds segments named audit-<first seq, 20 digits>.log (JSON
// lines, one record per line, rotated by size), checkpoints.log (JSON lines of
// signed Checkpoints: sequence, head hash, time, instance id) and, after a
// Prune, pruned.json (a signed PruneMarker naming the first retained record
// and its prev_hash).
//
// # Failure and torn-write rule
//
// A record is acknowledged only after the whole batch containing it,
// including its final newline, has been fsynced. Therefore any bytes after the
// last parseable record of a segment were never acknowledged. The rules are:
//
//   - When a write or fsync fails, the writer marks the segment broken and the
//     next Append first truncates it (through the open descriptor) back to the
//     size of its last durable batch and fsyncs it, and then opens a NEW
//     segment named for the next sequence. The chain continues from the last
//     durable record. If truncation fails the log stays unavailable.
//   - On Open, bytes after the last parseable record of the last segment are
//     truncated (a torn write after a crash); the byte count, never the bytes,
//     is logged and counted in Stats.TornBytes.
//   - Verify, which never modifies anything, tolerates an unterminated final
//     line of a segment (a torn write not yet repaired by Open) and lists it
//     in Report.TornTails. A complete (newline-terminated) line that is not a
//     valid record is reported as KindModified.
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
