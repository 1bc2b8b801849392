package audit

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// replicaLog opens replica's chain in dir/replica.
func replicaLog(t *testing.T, dir, replica string, key *ecdsa.PrivateKey) (*Log, string) {
	t.Helper()
	o := testOptions()
	o.InstanceID, o.Replica = replica, replica
	d := filepath.Join(dir, replica)
	return openLog(t, d, key, o), d
}

// cluster writes three replicas' chains with a checkpoint each and returns
// their directories and published checkpoints.
func clusterChains(t *testing.T, key *ecdsa.PrivateKey) ([]string, []Checkpoint) {
	t.Helper()
	root := t.TempDir()
	var dirs []string
	var pub []Checkpoint
	for i, r := range []string{"replica-0", "replica-1", "replica-2"} {
		l, d := replicaLog(t, root, r, key)
		appendN(t, l, 5+i)
		cp, err := l.Checkpoint(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		dirs, pub = append(dirs, d), append(pub, cp)
	}
	return dirs, pub
}

// TestReplicaChainsNameTheirReplicaAndVerifyTogether: every record and
// checkpoint of a replica's chain names it; the three chains verify
// together against their published checkpoints.
func TestReplicaChainsNameTheirReplicaAndVerifyTogether(t *testing.T) {
	key := newKey(t)
	dirs, pub := clusterChains(t, key)
	res, err := VerifyReplicas(dirs, &key.PublicKey, pub)
	if err != nil {
		t.Fatalf("VerifyReplicas: %v", err)
	}
	if len(res) != 3 {
		t.Fatalf("%d results, want 3", len(res))
	}
	for i, r := range res {
		if r.Err != nil || r.Report.Records != uint64(5+i) || !r.Report.AnchorChecked || r.Published == nil {
			t.Fatalf("chain %d: %+v", i, r)
		}
		if want := filepath.Base(r.Dir); r.Replica != want || r.Published.InstanceID != want {
			t.Fatalf("chain %s: replica %q, checkpoint instance %q", r.Dir, r.Replica, r.Published.InstanceID)
		}
	}
	b, err := os.ReadFile(filepath.Join(dirs[1], segmentName(1)))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), `"replica":"replica-1"`); n != 6 {
		t.Fatalf("%d of 6 records name replica-1", n)
	}
}

// TestVerifyReplicasReportsAMissingOrTruncatedChain: a replica whose chain
// is not given, and one whose chain was cut before the checkpoint it
// published, are each reported.
func TestVerifyReplicasReportsAMissingOrTruncatedChain(t *testing.T) {
	key := newKey(t)
	dirs, pub := clusterChains(t, key)
	_, err := VerifyReplicas(dirs[:2], &key.PublicKey, pub)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Kind != KindMissing || !strings.Contains(ve.Reason, "replica-2") {
		t.Fatalf("without replica-2's chain: %v, want %s naming replica-2", err, KindMissing)
	}
	// Cut replica-1's chain: its last record goes.
	seg := filepath.Join(dirs[1], segmentName(1))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if err := os.WriteFile(seg, []byte(strings.Join(lines[:len(lines)-2], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dirs[1], checkpointsFile)); err != nil {
		t.Fatal(err)
	}
	res, err := VerifyReplicas(dirs, &key.PublicKey, pub)
	if !errors.As(err, &ve) || ve.Kind != KindTruncated {
		t.Fatalf("with replica-1's chain cut: %v, want %s", err, KindTruncated)
	}
	if res[1].Err == nil || res[0].Err != nil || res[2].Err != nil {
		t.Fatalf("results: %+v", res)
	}
}

// TestAChainGivenAsAnotherReplicasIsRefused: a record of one replica put in
// another's chain, and two directories of one replica, are refused; an
// old chain whose records name no replica (format 1) still verifies.
func TestAChainGivenAsAnotherReplicasIsRefused(t *testing.T) {
	key := newKey(t)
	dirs, pub := clusterChains(t, key)
	if _, err := VerifyReplicas([]string{dirs[0], dirs[0]}, &key.PublicKey, pub[:1]); err == nil {
		t.Fatal("two directories of one replica were accepted")
	}
	// A chain of format 1 (no replica in its records) continued by a
	// replica: both formats verify in one chain.
	d := filepath.Join(t.TempDir(), "old")
	l := openLog(t, d, key, testOptions())
	appendN(t, l, 3)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	o := testOptions()
	o.InstanceID, o.Replica = "old", "old"
	l = openLog(t, d, key, o)
	appendN(t, l, 2)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, d, key, nil)
	if rep.Records != 5 {
		t.Fatalf("mixed-format chain: %d records", rep.Records)
	}
	if r, _ := ReplicaOf(d); r != "old" {
		t.Fatalf("ReplicaOf = %q", r)
	}
	// Rename replica-1's records to replica-0 in place: the hash breaks.
	seg := filepath.Join(dirs[1], segmentName(1))
	b, _ := os.ReadFile(seg)
	if err := os.WriteFile(seg, []byte(strings.ReplaceAll(string(b), `"replica":"replica-1"`, `"replica":"replica-9"`)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(dirs[1], &key.PublicKey, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a record's replica changed: %v, want a verification failure", err)
	}
}

// TestReplicasReportCoversEveryChain: the transparency report over three
// replicas counts every chain's operations and names each chain's range.
func TestReplicasReportCoversEveryChain(t *testing.T) {
	key := newKey(t)
	dirs, _ := clusterChains(t, key)
	counts := func(m string) bool { return strings.HasSuffix(m, "/Decrypt") }
	rep, err := BuildReplicasReport(dirs, time.Time{}, time.Time{}, []string{"Decrypt"}, counts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Operations != 5+6+7 || len(rep.Replicas) != 3 {
		t.Fatalf("report: %d operations over %d replicas, want 18 over 3", rep.Operations, len(rep.Replicas))
	}
	for i, r := range rep.Replicas {
		if r.Replica != filepath.Base(dirs[i]) || r.Records != uint64(5+i) || len(r.Head) == 0 {
			t.Fatalf("replica range %d: %+v", i, r)
		}
	}
	one, err := BuildReport(dirs[0], time.Time{}, time.Time{}, []string{"Decrypt"}, counts)
	if err != nil || len(one.Replicas) != 1 || one.Replicas[0].Replica != "replica-0" {
		t.Fatalf("one replica's report names %+v, %v", one.Replicas, err)
	}
}
