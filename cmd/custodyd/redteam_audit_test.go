package main

// Red-team drills against the split audit check of commit 53352e9 (a start
// verifies the token mark's record and what follows; the records before the
// mark are verified in the background and an edit found there condemns the
// log). The attacker is root on the host: the audit directory is theirs,
// the token's mark and the officers' shares are not. Each drill runs on a
// clone of the production vault of TestRootOnHostDrills and asserts the
// defence: custodyd must not keep serving, nor sign, over a directory that
// `custodyctl audit verify` rejects.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
)

func TestRedteamAuditSplitCheck(t *testing.T) {
	f := newRootFixture(t)
	t.Run("sparse extra segment stalls the background check", func(t *testing.T) { redteamSparseStall(t, f) })
	t.Run("overlapping segment copy splits the two walks", func(t *testing.T) { redteamOverlap(t, f) })
}

// rtSegName is the name of the audit segment whose first record is seq.
func rtSegName(seq uint64) string { return fmt.Sprintf("audit-%020d.log", seq) }

// rtLines reads a segment's complete lines (up to its zero tail).
func rtLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	b = b[:bytes.LastIndexByte(b, '\n')+1]
	return bytes.SplitAfter(b[:len(b)-1], []byte("\n"))
}

func rtSeq(t *testing.T, line []byte) uint64 {
	t.Helper()
	var r struct {
		Seq uint64 `json:"seq"`
	}
	if err := json.Unmarshal(bytes.TrimSuffix(line, []byte("\n")), &r); err != nil {
		t.Fatal(err)
	}
	return r.Seq
}

func rtWrite(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	var b []byte
	for _, l := range lines {
		b = append(append(b, bytes.TrimSuffix(l, []byte("\n"))...), '\n')
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rtSignNow asks custodyd, as the auditor, to sign a checkpoint of its
// current head.
func rtSignNow(t *testing.T, v *rootVault) error {
	t.Helper()
	_, err := custodyv1.NewAuditServiceClient(v.conn(t, "auditor")).GetLatestCheckpoint(tctx(t), &custodyv1.GetLatestCheckpointRequest{Current: true})
	return err
}

// rtCondemnedWithin polls /readyz (not the relay, whose budget and freeze
// a poll would use up) until it answers 503 or d passes.
func rtCondemnedWithin(t *testing.T, v *rootVault, d time.Duration) (bool, string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		code, body := v.get(t, "/readyz")
		if code == 503 {
			return true, body
		}
		if time.Now().After(deadline) {
			return false, fmt.Sprintf("%d %s", code, body)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// redteamSparseStall: root edits an old Encrypt record in place (hashes
// kept), then creates audit-00000000000000000000.log, an 8 TiB sparse file
// (no disk used). The start's VerifyFrom never opens it (the mark's segment
// comes after it). The background VerifyUpTo opens it first; it holds no
// line, and the torn-tail scan after its data reads all 8 TiB of zeros
// (hours; on xfs/btrfs/tmpfs the file can be 8 EiB: never) before the
// edited record is reached. Meanwhile custodyd serves, signs checkpoints
// and advances the token's mark. The defence holds if custodyd is
// condemned (readyz 503, requests UNAVAILABLE, nothing signed) promptly.
func redteamSparseStall(t *testing.T, f *rootFixture) {
	v := f.clone(t)
	v.start(t)
	v.unsealBoth(t)
	for i := 0; i < 3; i++ {
		if err := encryptOn(t, v.conn(t, "relay")); err != nil {
			t.Fatal(err)
		}
	}
	v.stop(t, syscall.SIGTERM)
	dir := filepath.Join(v.data, "audit")
	editOldEncryptRecord(t, dir)
	sparse := filepath.Join(dir, rtSegName(0))
	fh, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Truncate(8 << 40); err != nil {
		// A file system with a smaller largest file: 1 TiB of zeros
		// still takes far longer to read than the test waits.
		if err := fh.Truncate(1 << 40); err != nil {
			fh.Close()
			t.Fatalf("no sparse file of 8 or 1 TiB here: %v", err)
		}
	}
	fh.Close()
	cps, _ := audit.ReadCheckpoints(dir)

	v.start(t)
	v.unsealBoth(t)
	condemned, last := rtCondemnedWithin(t, v, 30*time.Second)
	if !condemned {
		served := encryptOn(t, v.conn(t, "relay"))
		signed := rtSignNow(t, v)
		now, _ := audit.ReadCheckpoints(dir)
		v.stop(t, syscall.SIGKILL) // a SIGTERM would wait on the stalled check
		t.Fatalf("HOLE: 30s after the unseal custodyd still serves over an edited record before the mark (readyz %s; relay Encrypt: %v; checkpoint signed on demand: %v; checkpoints %d -> %d): an 8 TiB sparse %s stalls the background check", last, served, signed, len(cps), len(now), rtSegName(0))
	}
	wantCode(t, encryptOn(t, v.conn(t, "relay")), codes.Unavailable, "a relay once the edit is found")
	if err := rtSignNow(t, v); err == nil {
		t.Error("custodyd signs a checkpoint over the condemned log")
	}
	v.stop(t, syscall.SIGTERM)
	wantAll(t, "custodyd's log", v.stderr.String(), "audit: log condemned")
}

// redteamOverlap: run 1 ends with SIGTERM (the token's mark = its last
// record L); run 2 serves a few records and is SIGKILLed before any
// checkpoint, so records after the mark sit in audit-…1.log. Root copies
// records L.. into a new segment named audit-<L>.log and edits the records
// after the newest checkpoint in the original segment. VerifyFrom starts in
// the copy (the last segment named at or before the mark) and finds a good
// chain; VerifyUpTo reads the original up to the mark and stops; nobody
// reads the original's edited records. The defence holds if the start is
// refused or the log condemned, as `audit verify` rejects the directory.
func redteamOverlap(t *testing.T, f *rootFixture) {
	v := f.clone(t)
	v.start(t)
	v.unsealBoth(t)
	pub := v.pubkey(t)
	before := filepath.Join(t.TempDir(), "before.jsonl")
	v.anchor(t, before)
	if err := encryptOn(t, v.conn(t, "relay")); err != nil {
		t.Fatal(err)
	}
	v.stop(t, syscall.SIGTERM) // the token's mark is the final checkpoint
	dir := filepath.Join(v.data, "audit")
	segs, _ := filepath.Glob(filepath.Join(dir, "audit-*.log"))
	if len(segs) != 1 {
		t.Fatalf("want one segment, have %v", segs)
	}
	lines := rtLines(t, segs[0])
	markSeq := rtSeq(t, lines[len(lines)-1])

	v.start(t)
	v.unsealBoth(t)
	for i := 0; i < 3; i++ {
		if err := encryptOn(t, v.conn(t, "relay")); err != nil {
			t.Fatal(err)
		}
	}
	v.stop(t, syscall.SIGKILL)
	lines = rtLines(t, segs[0])
	cps, _ := audit.ReadCheckpoints(dir)
	newest := cps[len(cps)-1].Seq
	first := rtSeq(t, lines[0])

	// The copy: records markSeq.. in a segment of their own.
	rtWrite(t, filepath.Join(dir, rtSegName(markSeq)), lines[markSeq-first:])
	// The original: every record after the newest checkpoint edited.
	edited := 0
	for i := range lines {
		if rtSeq(t, lines[i]) <= newest {
			continue
		}
		e := bytes.Replace(lines[i], []byte(`"outcome":"ok"`), []byte(`"outcome":"denied"`), 1)
		if !bytes.Equal(e, lines[i]) {
			edited++
		}
		lines[i] = e
	}
	if edited == 0 {
		t.Fatalf("no record after the newest checkpoint %d to edit (mark %d, last %d)", newest, markSeq, rtSeq(t, lines[len(lines)-1]))
	}
	rtWrite(t, segs[0], lines)
	forged := filepath.Join(t.TempDir(), "forged")
	copyTree(t, dir, forged)
	if inv := v.verifyAudit(t, forged, pub, before); inv.code == 0 {
		t.Fatalf("audit verify passes the overlapping directory:\n%s", inv.stdout)
	}

	v.start(t)
	for _, n := range []string{"alice", "bob"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			if n == "bob" && strings.Contains(inv.stderr, "refusing to serve") {
				v.stop(t, syscall.SIGTERM)
				return // refused at start: the defence holds
			}
			t.Fatalf("unseal by %s: %+v", n, inv)
		}
	}
	condemned, last := rtCondemnedWithin(t, v, 15*time.Second)
	if !condemned {
		served := encryptOn(t, v.conn(t, "relay"))
		signed := rtSignNow(t, v)
		v.stop(t, syscall.SIGTERM)
		fcps, _ := audit.ReadCheckpoints(forged)
		now, _ := audit.ReadCheckpoints(dir)
		t.Fatalf("HOLE: custodyd serves over a directory audit verify rejects (%d records after the mark edited in %s, a copy named %s read instead): readyz %s; relay Encrypt: %v; checkpoint signed on demand: %v; checkpoints %d -> %d",
			edited, filepath.Base(segs[0]), rtSegName(markSeq), last, served, signed, len(fcps), len(now))
	}
	if err := encryptOn(t, v.conn(t, "relay")); status.Code(err) != codes.Unavailable {
		t.Errorf("relay Encrypt on the condemned log: %v, want UNAVAILABLE", err)
	}
	v.stop(t, syscall.SIGTERM)
}
