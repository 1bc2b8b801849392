package main

// Round three of root on the vault's host, against the store revision
// every audit record carries (format 3), the audit.unattested note and
// the keys.destroy records, on the production vault of the root drills
// (newRootFixture: a real 2-of-3 ceremony, sealed starts unsealed by alice
// and bob).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/internal/audit"
)

// rt3TokenObjects is the SoftHSM object files in dir with their content.
func rt3TokenObjects(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || !strings.HasSuffix(p, ".object") || fi.Name() == "token.object" {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rt3NewObjects is what root sees of the token mark: it is rewritten at
// every checkpoint (a new object, the old one destroyed; SoftHSM may reuse
// the file), so the object files created or changed since the previous
// stop are the mark's.
func rt3NewObjects(t *testing.T, tokDir string, before map[string]string) []string {
	t.Helper()
	var out []string
	for n, b := range rt3TokenObjects(t, tokDir) {
		if old, ok := before[n]; !ok || old != b {
			out = append(out, n)
		}
	}
	return out
}

// rt3DeleteObjects removes SoftHSM object files (and their lock files):
// a file operation, no PIN needed.
func rt3DeleteObjects(t *testing.T, paths []string) {
	t.Helper()
	for _, n := range paths {
		base := strings.TrimSuffix(n, ".object")
		for _, p := range []string{base + ".object", base + ".lock"} {
			if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
		}
	}
}

// rt3AppendForeign appends one well-chained record to the audit directory
// as a second process would (the chain has no key), written by the audit
// package without a store revision (format 2, naming replica), and puts
// checkpoints.log back as it was (the writer signs a checkpoint of its own
// at Close with a throwaway key).
func rt3AppendForeign(t *testing.T, dir, replica string) { rt3AppendForeignRev(t, dir, replica, nil) }

// rt3AppendForeignRev is rt3AppendForeign writing format 3 when storeRev
// is set (the writer keeps the last record's revision, never lower).
func rt3AppendForeignRev(t *testing.T, dir, replica string, storeRev func() uint64) {
	t.Helper()
	ck := filepath.Join(dir, "checkpoints.log")
	keep, err := os.ReadFile(ck)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(context.Background(), dir, k, audit.Options{Replica: replica, InstanceID: replica, CheckpointInterval: time.Hour, StoreRevision: storeRev})
	if err != nil {
		t.Fatalf("open the audit directory as a second process: %v", err)
	}
	if _, err := l.Append(context.Background(), audit.Record{Time: time.Now(), Identity: "custodyd", Method: "Health", Outcome: audit.OutcomeOK, Code: "OK"}); err != nil {
		t.Fatal(err)
	}
	l.Close(context.Background())
	if keep != nil {
		if err := os.WriteFile(ck, keep, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// rt3LastReplica is the replica name the vault's records carry.
func rt3LastReplica(t *testing.T, dir string) string {
	t.Helper()
	recs := auditRecords(t, dir)
	if len(recs) == 0 {
		t.Fatal("no audit records")
	}
	r, _ := recs[len(recs)-1]["replica"].(string)
	return r
}

// TestRedteamRoot3MarkObjectDeletedStoreRollback: the token's audit mark
// is one private data object, and on SoftHSM every object is one file in
// the token directory: root cannot read or write it without the PIN, but
// can delete the file. custodyd reads "no mark" as "a new vault, or one
// from before marks" (checkAuditMark logs it at Info and goes on), so
// auditmark.Check — and with it VerifyFrom, the only walk of the records
// after the mark at start — is skipped. Root stops custodyd after the
// relay spent its budget and was frozen, deletes the mark's object file,
// puts back the store and checkpoints.log from before the spend, keeps
// every audit record (the anchors still match) and appends one
// well-chained record of format 2 (no store_rev), so the log's last
// record carries no revision for the start's comparison; the new
// format-downgrade check is in the verifier the start no longer runs.
// The officers unseal what looks like a routine restart.
//
// Secure behaviour: the start is refused (a production vault with a
// ceremony but no mark, or a last record below the chain's store
// revision).
//
// Was a hole; fixed: with no mark on the token and records in the log, the
// start walks the chain from its newest signed checkpoint
// (daemon.walkWithoutMark), which refuses the format downgrade, and Open
// takes the newest store revision an earlier record carries.
func TestRedteamRoot3MarkObjectDeletedStoreRollback(t *testing.T) {
	v, pub, before := rt2Serving(t)
	db := filepath.Join(v.data, "custody.db")
	auditDir := filepath.Join(v.data, "audit")
	if err := encryptOn(t, v.conn(t, "relay")); err != nil {
		t.Fatalf("the relay before the attack: %v", err)
	}
	v.stop(t, syscall.SIGTERM)
	dbSnap := filepath.Join(t.TempDir(), "custody.db")
	rt2Copy(t, db, dbSnap)
	ckSnap := filepath.Join(t.TempDir(), "checkpoints.log")
	rt2Copy(t, filepath.Join(auditDir, "checkpoints.log"), ckSnap)
	objs := rt3TokenObjects(t, v.tok.TokenDir)

	v.start(t)
	v.unsealBoth(t)
	relayConn := v.conn(t, "relay")
	for i := 0; i < 30; i++ {
		_ = encryptOn(t, relayConn)
	}
	err := encryptOn(t, relayConn)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "frozen") {
		t.Fatalf("the relay is not frozen: %v", err)
	}
	between := filepath.Join(t.TempDir(), "between.jsonl")
	v.anchor(t, between)
	v.stop(t, syscall.SIGTERM)

	// The attack.
	mark := rt3NewObjects(t, v.tok.TokenDir, objs)
	t.Logf("object files created since the last stop (the mark): %v", mark)
	rt3DeleteObjects(t, mark)
	rt2Copy(t, dbSnap, db)
	rt2Copy(t, ckSnap, filepath.Join(auditDir, "checkpoints.log"))
	rt3AppendForeign(t, auditDir, rt3LastReplica(t, auditDir))

	v.start(t)
	ok, why := rt2Unseal(t, v)
	if !ok {
		wantAll(t, "the refusal", why, "refusing to serve")
		t.Logf("refused: %s", why)
		v.stop(t, syscall.SIGTERM)
		return
	}
	err = encryptOn(t, v.conn(t, "relay"))
	after := filepath.Join(t.TempDir(), "after.jsonl")
	v.anchor(t, after)
	v.stop(t, syscall.SIGTERM)
	inv := v.verifyAudit(t, auditDir, pub, before, between, after)
	unatt := auditRecordsWhere(t, auditDir, func(r map[string]any) bool { return r["method"] == "audit.unattested" })
	t.Logf("the rolled-back store serves; the frozen relay's encrypt: %v; audit verify with anchors: code %d %s%s; audit.unattested records: %v",
		err, inv.code, inv.stdout, inv.stderr, unatt)
	t.Fatalf("HOLE: the audit mark's object file deleted, the store put back behind the relay's spend and freeze, a format-2 record appended: custodyd serves (relay encrypt: %v)", err)
}

// TestRedteamRoot3RecordsAppendedAfterACleanStopAreNamed: root stops
// custodyd cleanly (its last act is a checkpoint, so nothing is unattested)
// and, while it is down, appends a well-chained record of the current
// format carrying the last record's store revision (a second process with
// the audit package; the chain has no key), and puts checkpoints.log back
// as it was. With the token's mark in place the start walks the record and
// accepts it; the audit.unattested note names it before the start-up
// checkpoint signs over it. HELD.
func TestRedteamRoot3RecordsAppendedAfterACleanStopAreNamed(t *testing.T) {
	f := newRootFixture(t)
	v := f.clone(t)
	auditDir := filepath.Join(v.data, "audit")
	v.start(t)
	v.unsealBoth(t)
	if err := encryptOn(t, v.conn(t, "relay")); err != nil {
		t.Fatal(err)
	}
	v.stop(t, syscall.SIGTERM)
	recs := auditRecords(t, auditDir)
	last := recs[len(recs)-1]
	seq := uint64(last["seq"].(float64))
	rev := uint64(last["store_rev"].(float64))
	rt3AppendForeignRev(t, auditDir, rt3LastReplica(t, auditDir), func() uint64 { return rev })

	v.start(t)
	if ok, why := rt2Unseal(t, v); !ok {
		t.Fatalf("refused: %s", why)
	}
	v.stop(t, syscall.SIGTERM)
	notes := auditRecordsWhere(t, auditDir, func(r map[string]any) bool { return r["method"] == "audit.unattested" })
	want := fmt.Sprintf("records %d to %d were after", seq+1, seq+1)
	for _, n := range notes {
		if d, _ := n["detail"].(string); strings.Contains(d, want) {
			t.Logf("named: %s", d)
			return
		}
	}
	t.Fatalf("the record root appended (%d) was signed over without an audit.unattested note naming it: %v", seq+1, notes)
}

// TestRedteamRoot3ForgedRecordsUnderAGenuineCheckpointWithoutTheMark: the
// audit.unattested span starts at the newest checkpoint in checkpoints.log
// whose signature verifies (audit.Log.loadLatestCheckpoint), and Open does
// not compare that checkpoint's head with the record at its sequence; only
// VerifyFrom does, and only when the token holds a mark. Root deletes the
// mark's object file, cuts the last two records of a cleanly stopped log
// (its last checkpoint covers them) and writes two others in their place,
// well chained, keeping checkpoints.log: the start takes the genuine
// checkpoint as covering the forged records, names nothing, and its
// start-up checkpoint signs over them. Secure: refused, or named.
//
// Was a hole; fixed: the walk without a mark starts at the newest signed
// checkpoint and compares its head with the record at its sequence.
func TestRedteamRoot3ForgedRecordsUnderAGenuineCheckpointWithoutTheMark(t *testing.T) {
	f := newRootFixture(t)
	v := f.clone(t)
	auditDir := filepath.Join(v.data, "audit")
	v.start(t)
	v.unsealBoth(t)
	pub := v.pubkey(t)
	objs := rt3TokenObjects(t, v.tok.TokenDir)
	if err := encryptOn(t, v.conn(t, "relay")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // a mark write after the start's
	v.stop(t, syscall.SIGTERM)
	cps := rt2Checkpoints(t, auditDir)
	recs := auditRecords(t, auditDir)
	head := uint64(recs[len(recs)-1]["seq"].(float64))
	if cps[len(cps)-1][0] != head {
		t.Fatalf("newest checkpoint %d, head %d: not a clean stop", cps[len(cps)-1][0], head)
	}
	rev := uint64(recs[len(recs)-1]["store_rev"].(float64))
	replica := rt3LastReplica(t, auditDir)

	mark := rt3NewObjects(t, v.tok.TokenDir, objs)
	rt3DeleteObjects(t, mark)
	segs, _ := filepath.Glob(filepath.Join(auditDir, "audit-*.log"))
	seg := segs[len(segs)-1]
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(strings.TrimRight(string(b), "\x00\n"), "\n")
	if err := os.WriteFile(seg, []byte(strings.Join(lines[:len(lines)-2], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	rt3AppendForeignRev(t, auditDir, replica, func() uint64 { return rev })
	rt3AppendForeignRev(t, auditDir, replica, func() uint64 { return rev })

	v.start(t)
	ok, why := rt2Unseal(t, v)
	if !ok {
		t.Logf("refused: %s", why)
		v.stop(t, syscall.SIGTERM)
		return
	}
	v.stop(t, syscall.SIGTERM)
	notes := auditRecordsWhere(t, auditDir, func(r map[string]any) bool { return r["method"] == "audit.unattested" })
	inv := v.run(t, nil, "audit", "verify", "--dir", auditDir, "--pubkey", pub)
	t.Logf("audit.unattested notes: %v; audit verify (no anchors): code %d %s%s", notes, inv.code, inv.stdout, inv.stderr)
	for _, n := range notes {
		if d, _ := n["detail"].(string); strings.Contains(d, fmt.Sprintf("to %d were after", head)) {
			return
		}
	}
	t.Fatalf("HOLE: records %d and %d forged under the genuine checkpoint %d were signed over with no audit.unattested note (the token's mark object deleted)", head-1, head, head)
}
