package audit

import (
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"
)

// Red-team tests of root on the host against the store revision records
// carry (format 3): forged records appended, well chained (the chain has
// no key), after the kept ones.

// rtAppendForged appends to the segment at path a record chained to its
// last one, with format and store revision of root's choosing.
func rtAppendForged(t *testing.T, path string, format uint8, storeRev uint64) {
	t.Helper()
	lines := readLines(t, path)
	last, err := parseRecord(lines[len(lines)-1])
	if err != nil {
		t.Fatal(err)
	}
	r := sampleRecord(0)
	r.Time = time.Now().UTC()
	r.Seq, r.PrevHash = last.Seq+1, last.Hash
	r.Format, r.Replica, r.StoreRev = int(format), last.Replica, storeRev
	if format == recordFormatReplica && r.Replica == "" {
		r.Replica = "test"
	}
	r.Hash = computeHash(&r)
	b, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	writeLines(t, path, append(lines, b))
}

// rtLogWithMark writes records at store revision 40 and a checkpoint (the
// token's mark) over them, then one more record, and closes the log.
func rtLogWithMark(t *testing.T) (dir string, cp Checkpoint, path string, pub any) {
	t.Helper()
	key := newKey(t)
	dir = t.TempDir()
	opts := testOptions()
	opts.StoreRevision = func() uint64 { return 40 }
	l := openLog(t, dir, key, opts)
	appendN(t, l, 3)
	cp, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 1)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	return dir, cp, segmentFiles(t, dir)[0], key.Public()
}

// TestRedteamStoreRevForgedTailIsRefusedByTheStartsWalk: with a mark on the
// token, the start walks the records from the mark (VerifyFrom). A record
// root appends without a store revision (format 1 or 2) or with a lower one
// (format 3, revision 0 or the old store's) is refused there: the last
// record cannot be made to hide the chain's revision while the mark is
// read. HELD.
func TestRedteamStoreRevForgedTailIsRefusedByTheStartsWalk(t *testing.T) {
	for _, c := range []struct {
		name   string
		format uint8
		rev    uint64
		kind   Kind
	}{
		{"format 2", recordFormatReplica, 0, KindModified},
		{"format 1", recordFormat, 0, KindModified},
		{"format 3 revision 0", recordFormatStoreRev, 0, KindStoreRolledBack},
		{"format 3 the old store's revision", recordFormatStoreRev, 39, KindStoreRolledBack},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, cp, path, pub := rtLogWithMark(t)
			rtAppendForged(t, path, c.format, c.rev)
			_, err := VerifyFrom(dir, pub, &cp)
			wantVerifyError(t, err, c.kind, 5)
			_, err = Verify(dir, pub, nil)
			wantVerifyError(t, err, c.kind, 5)
		})
	}
}

// TestRedteamStoreRevOpenedRevisionAfterADowngrade: the start's comparison
// of the store with the log (daemon.complete) uses OpenedStoreRevision, the
// last record's store_rev as recoverHead read it; only VerifyFrom, which
// runs when the token holds a mark, refuses a format downgrade. A record
// of format 2 appended after format-3 ones makes OpenedStoreRevision 0, and
// the writer continues from 0 too. On SoftHSM the mark is one object file
// root can delete (cmd/custodyd TestRedteamRoot3MarkObjectDeletedStoreRollback).
// Was a hole; fixed: a last record without a store revision makes Open
// take the newest one an earlier record carries (newestStoreRev).
func TestRedteamStoreRevOpenedRevisionAfterADowngrade(t *testing.T) {
	dir, _, path, _ := rtLogWithMark(t)
	key := newKey(t)
	rtAppendForged(t, path, recordFormatReplica, 0)
	opts := testOptions()
	opts.StoreRevision = func() uint64 { return 3 } // the old store's
	l, err := Open(context.Background(), dir, key, opts)
	if err != nil {
		t.Logf("Open refuses the downgraded chain: %v", err)
		return
	}
	defer l.Close(context.Background())
	if got := l.OpenedStoreRevision(); got < 40 {
		t.Fatalf("HOLE: OpenedStoreRevision = %d after a format-2 record appended to records at revision 40: the start compares the store with it", got)
	}
}

// TestRedteamStoreRevHugeRevisionIsOnlyDenialOfService: a record appended
// with store_rev MaxUint64 verifies (revisions only must not go down) and
// makes every later start refuse the store: denial of service, which root
// has anyway; it does not let an older store in. NOTED, not a hole.
func TestRedteamStoreRevHugeRevisionIsOnlyDenialOfService(t *testing.T) {
	dir, _, path, pub := rtLogWithMark(t)
	rtAppendForged(t, path, recordFormatStoreRev, math.MaxUint64)
	if _, err := Verify(dir, pub, nil); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	key := newKey(t)
	opts := testOptions()
	opts.StoreRevision = func() uint64 { return 41 }
	l := openLog(t, dir, key, opts)
	if got := l.OpenedStoreRevision(); got != math.MaxUint64 {
		t.Fatalf("OpenedStoreRevision = %d, want MaxUint64 (a start refuses every store)", got)
	}
}
