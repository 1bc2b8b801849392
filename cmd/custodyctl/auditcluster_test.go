package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/audit"
)

// replicaChains writes the audit chains of three replicas, each ending in
// a checkpoint, and a file of their checkpoints as the replicas publish
// them ("audit replicas --out" writes this format).
func replicaChains(t *testing.T) (dirs []string, pubFile, published string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubFile = writePubKey(t, &key.PublicKey)
	root := t.TempDir()
	var lines []string
	for i := range 3 {
		r := fmt.Sprintf("replica-%d", i)
		dir := filepath.Join(root, r)
		l, err := audit.Open(context.Background(), dir, key, audit.Options{CheckpointEvery: 1 << 40, CheckpointInterval: -1,
			InstanceID: r, Replica: r, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		for j := range 4 + i {
			if _, err := l.Append(context.Background(), audit.Record{Identity: "relay", Method: "Decrypt", Key: "mail",
				Outcome: audit.OutcomeOK, Code: "OK", Detail: fmt.Sprint(j)}); err != nil {
				t.Fatal(err)
			}
		}
		cp, err := l.Checkpoint(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(cp)
		lines = append(lines, string(b))
		dirs = append(dirs, dir)
	}
	published = filepath.Join(root, "published.jsonl")
	if err := os.WriteFile(published, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dirs, pubFile, published
}

func TestAuditVerifyChecksEveryReplicasChainTogether(t *testing.T) {
	dirs, pub, published := replicaChains(t)
	args := []string{"audit", "verify", "--pubkey", pub, "--checkpoints", published}
	for _, d := range dirs {
		args = append(args, "--dir", d)
	}
	inv := runCLI(t, nil, args...)
	if inv.code != exitOK {
		t.Fatalf("exit %d, stderr %q\n%s", inv.code, inv.stderr, inv.stdout)
	}
	for _, want := range []string{"audit chains of 3 replicas: OK", "replica replica-2: OK", "records:      6 (seq 1 to 6)", "matches the chain"} {
		if !strings.Contains(inv.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, inv.stdout)
		}
	}

	// One replica's directory left out: reported missing, exit 1.
	inv = runCLI(t, nil, "audit", "verify", "--pubkey", pub, "--checkpoints", published, "--dir", dirs[0], "--dir", dirs[2])
	if inv.code == exitOK || !strings.Contains(inv.stdout, "replica replica-1: FAILED  (no directory given)") || !strings.Contains(inv.stdout, "missing") {
		t.Fatalf("a missing replica chain: exit %d\n%s\n%s", inv.code, inv.stdout, inv.stderr)
	}

	// One replica's chain cut before its published checkpoint: truncated.
	seg, _ := filepath.Glob(filepath.Join(dirs[1], "audit-*.log"))
	b, _ := os.ReadFile(seg[0])
	lines := strings.SplitAfter(string(b), "\n")
	if err := os.WriteFile(seg[0], []byte(strings.Join(lines[:2], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dirs[1], "checkpoints.log"))
	args = []string{"audit", "verify", "--pubkey", pub, "--checkpoints", published, "--output", "json"}
	for _, d := range dirs {
		args = append(args, "--dir", d)
	}
	inv = runCLI(t, nil, args...)
	var res replicasResult
	if err := json.Unmarshal([]byte(inv.stdout), &res); err != nil {
		t.Fatalf("json output: %v\n%s", err, inv.stdout)
	}
	if inv.code == exitOK || res.OK || res.Replicas[1].Error == nil || res.Replicas[1].Error.Kind != audit.KindTruncated {
		t.Fatalf("a truncated replica chain: exit %d, %+v", inv.code, res)
	}
}

func TestAuditReportReplicasCountsEveryChain(t *testing.T) {
	dirs, pub, published := replicaChains(t)
	out := filepath.Join(t.TempDir(), "report.json")
	args := []string{"audit", "report", "replicas", "--pubkey", pub, "--checkpoints", published, "--methods", "Decrypt", "--out", out}
	for _, d := range dirs {
		args = append(args, "--dir", d)
	}
	inv := runCLI(t, nil, args...)
	if inv.code != exitOK {
		t.Fatalf("exit %d, stderr %q", inv.code, inv.stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep audit.TransparencyReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Operations != 4+5+6 || len(rep.Replicas) != 3 {
		t.Fatalf("report counts %d operations over %d replicas, want 15 over 3", rep.Operations, len(rep.Replicas))
	}
}
