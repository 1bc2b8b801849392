package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/audit"
)

// auditFixture is a real audit log in a temp dir, signed with a software
// P-256 key standing in for the HSM audit key, with its public key on disk.
type auditFixture struct {
	dir, pubFile string
	key          *ecdsa.PrivateKey
	segment      string // the one segment file
}

// newAuditFixture writes n records and a checkpoint at every seq in cps.
func newAuditFixture(t *testing.T, n int, cps ...int) *auditFixture {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return buildAuditFixture(t, key, "", n, cps...)
}

// buildAuditFixture is newAuditFixture with a given key; variant changes
// every record's identity, so two variants are different histories.
func buildAuditFixture(t *testing.T, key *ecdsa.PrivateKey, variant string, n int, cps ...int) *auditFixture {
	t.Helper()
	f := &auditFixture{dir: filepath.Join(t.TempDir(), "audit"), key: key}
	f.pubFile = writePubKey(t, &key.PublicKey)
	ctx := context.Background()
	l, err := audit.Open(ctx, f.dir, key, audit.Options{CheckpointEvery: 1 << 40, CheckpointInterval: -1,
		InstanceID: "vault-test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	at := map[int]bool{}
	for _, c := range cps {
		at[c] = true
	}
	for i := 1; i <= n; i++ {
		rec := audit.Record{Identity: fmt.Sprintf("spiffe://custody.dev/relay-%d%s", i%2, variant), Role: "relay",
			Method: "Decrypt", Key: "mail", KeyVersion: 1, Outcome: audit.OutcomeOK, Code: "OK",
			ContextDigest: sha256Of(fmt.Sprint(map[string]string{"conversation": fmt.Sprint(i)}))}
		if i%4 == 0 {
			rec.Outcome, rec.Code = audit.OutcomeDenied, "PermissionDenied"
		}
		if _, err := l.Append(ctx, rec); err != nil {
			t.Fatal(err)
		}
		if at[i] {
			if _, err := l.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(f.dir, "audit-*.log"))
	if len(segs) != 1 {
		t.Fatalf("want one segment, have %v", segs)
	}
	f.segment = segs[0]
	return f
}

func writePubKey(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "audit.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// lines returns the segment's lines (each without its newline).
func (f *auditFixture) lines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(f.segment)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func (f *auditFixture) write(t *testing.T, lines []string) {
	t.Helper()
	if err := os.WriteFile(f.segment, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// assertVerifyFails checks exit 1, the one-line DataLoss error and that both
// name the kind and the record.
func assertVerifyFails(t *testing.T, inv invocation, kind audit.Kind, seq uint64) {
	t.Helper()
	assertOneErrorLine(t, inv, exitError, local)
	want := fmt.Sprintf("%s at seq %d", kind, seq)
	if !strings.Contains(inv.stderr, want) {
		t.Errorf("stderr %q does not name %q", inv.stderr, want)
	}
	if !strings.Contains(inv.stdout, "FAILED") || !strings.Contains(inv.stdout, fmt.Sprintf("seq %d", seq)) ||
		!strings.Contains(inv.stdout, string(kind)) {
		t.Errorf("stdout does not report the bad record:\n%s", inv.stdout)
	}
}

func TestAuditVerifyAcceptsAnUntouchedLog(t *testing.T) {
	f := newAuditFixture(t, 10, 8)
	inv := runCLI(t, nil, "audit", "verify", "--dir", f.dir, "--pubkey", f.pubFile)
	if inv.code != exitOK {
		t.Fatalf("exit %d, stderr %q", inv.code, inv.stderr)
	}
	// Close signs a final checkpoint of the head, so there are two.
	for _, want := range []string{": OK", "10 (seq 1 to 10)", "2 signed, 2 matched", "last checkpoint:  seq 10"} {
		if !strings.Contains(inv.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, inv.stdout)
		}
	}
}

func TestAuditVerifyNamesEachKindOfTamperingAndTheRecord(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func([]string) []string
		kind   audit.Kind
		seq    uint64
	}{
		{"modified", func(l []string) []string {
			l[2] = strings.Replace(l[2], "relay-1", "relay-0", 1)
			return l
		}, audit.KindModified, 3},
		{"deleted", func(l []string) []string { return append(l[:3:3], l[4:]...) }, audit.KindDeleted, 4},
		{"reordered", func(l []string) []string {
			l[2], l[3] = l[3], l[2]
			return l
		}, audit.KindReordered, 3},
		{"inserted", func(l []string) []string {
			return append(l[:2:2], append([]string{l[1]}, l[2:]...)...)
		}, audit.KindInserted, 2},
		{"garbage line", func(l []string) []string {
			l[5] = `{"not":"a record"}`
			return l
		}, audit.KindModified, 6},
		{"cut before checkpoint", func(l []string) []string { return l[:6] }, audit.KindTruncated, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newAuditFixture(t, 10, 8)
			f.write(t, tc.tamper(f.lines(t)))
			inv := runCLI(t, nil, "audit", "verify", "--dir", f.dir, "--pubkey", f.pubFile)
			assertVerifyFails(t, inv, tc.kind, tc.seq)
		})
	}
}

func TestAuditVerifyWithAnchorDetectsTruncationThatDeletedTheCheckpoints(t *testing.T) {
	f := newAuditFixture(t, 10, 10)
	// The auditor kept the latest checkpoint off-box (as the file sink and
	// "audit checkpoint --out" write it).
	anchors := filepath.Join(t.TempDir(), "anchors.jsonl")
	cp, err := os.ReadFile(filepath.Join(f.dir, "checkpoints.log"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(anchors, cp, 0o600); err != nil {
		t.Fatal(err)
	}
	if inv := runCLI(t, nil, "audit", "verify", "--dir", f.dir, "--pubkey", f.pubFile, "--anchor", anchors); inv.code != exitOK ||
		!strings.Contains(inv.stdout, "1 given, 1 checked") {
		t.Fatalf("untouched log with its anchor: exit %d\n%s%s", inv.code, inv.stdout, inv.stderr)
	}
	// Root on the vault cuts the last four records and the checkpoints that
	// would betray it.
	f.write(t, f.lines(t)[:6])
	if err := os.Remove(filepath.Join(f.dir, "checkpoints.log")); err != nil {
		t.Fatal(err)
	}
	if inv := runCLI(t, nil, "audit", "verify", "--dir", f.dir, "--pubkey", f.pubFile); inv.code != exitOK {
		t.Fatalf("without the anchor the cut log should still look consistent; exit %d %s", inv.code, inv.stderr)
	}
	inv := runCLI(t, nil, "audit", "verify", "--dir", f.dir, "--pubkey", f.pubFile, "--anchor", anchors)
	assertVerifyFails(t, inv, audit.KindTruncated, 7)
	// The report names the anchor that proves it: the newest, on the last line.
	newest := fmt.Sprintf("(%s line %d)", anchors, bytes.Count(cp, []byte("\n")))
	if !strings.Contains(inv.stderr, newest) || strings.Contains(inv.stderr, "line 0") {
		t.Errorf("stderr %q does not name the anchor as %q", inv.stderr, newest)
	}
}

func TestAuditVerifyChecksOlderAnchorsAgainstARewrittenLog(t *testing.T) {
	// The auditor anchored seq 5 of the true log. Someone then rewrote the
	// history and had it checkpointed by the same audit key (as a rogue
	// operator driving custodyd could), and the auditor's later anchor comes
	// from the rewritten log. The newest anchor matches; the older must not.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	truth := buildAuditFixture(t, key, "", 10, 5)
	forged := buildAuditFixture(t, key, "-forged", 10, 10)
	cp5, err := os.ReadFile(filepath.Join(truth.dir, "checkpoints.log"))
	if err != nil {
		t.Fatal(err)
	}
	cp10, err := os.ReadFile(filepath.Join(forged.dir, "checkpoints.log"))
	if err != nil {
		t.Fatal(err)
	}
	cp5 = cp5[:bytes.IndexByte(cp5, '\n')+1] // the anchor taken at seq 5
	anchors := filepath.Join(t.TempDir(), "anchors.jsonl")
	if err := os.WriteFile(anchors, append(cp5, cp10...), 0o600); err != nil {
		t.Fatal(err)
	}
	inv := runCLI(t, nil, "audit", "verify", "--dir", forged.dir, "--pubkey", forged.pubFile, "--anchor", anchors)
	assertVerifyFails(t, inv, audit.KindTruncated, 5)
	if want := fmt.Sprintf("anchor at %s line 1", anchors); !strings.Contains(inv.stderr, want) {
		t.Errorf("stderr %q does not name the contradicted anchor (%q)", inv.stderr, want)
	}
}

func TestAuditVerifyRejectsAnotherKeysSignatures(t *testing.T) {
	f := newAuditFixture(t, 3, 3)
	other := newAuditFixture(t, 1)
	inv := runCLI(t, nil, "audit", "verify", "--dir", f.dir, "--pubkey", other.pubFile)
	assertOneErrorLine(t, inv, exitError, local)
	if !strings.Contains(inv.stderr, "bad-signature") || !strings.Contains(inv.stderr, "checkpoints.log line 1") {
		t.Errorf("stderr %q does not name the bad checkpoint", inv.stderr)
	}
}

func TestAuditVerifyJSONNamesTheBadRecord(t *testing.T) {
	f := newAuditFixture(t, 6)
	l := f.lines(t)
	f.write(t, append(l[:2:2], l[3:]...))
	inv := runCLI(t, nil, "--output", "json", "audit", "verify", "--dir", f.dir, "--pubkey", f.pubFile)
	if inv.code != exitError {
		t.Fatalf("exit %d, want 1", inv.code)
	}
	var res struct {
		OK      bool `json:"ok"`
		Records int  `json:"records"`
		Error   struct {
			Kind string `json:"kind"`
			Seq  uint64 `json:"seq"`
			Line int    `json:"line"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(inv.stdout), &res); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, inv.stdout)
	}
	if res.OK || res.Error.Kind != "deleted" || res.Error.Seq != 3 || res.Error.Line != 3 || res.Records != 2 {
		t.Errorf("json result = %+v, want deleted at seq 3 line 3 after 2 good records", res)
	}
}

func TestAuditVerifyUsageErrors(t *testing.T) {
	f := newAuditFixture(t, 1)
	garbage := filepath.Join(t.TempDir(), "anchors")
	if err := os.WriteFile(garbage, []byte("{\"seq\":1}\nnot json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"audit", "verify", "--pubkey", f.pubFile},
		{"audit", "verify", "--dir", f.dir},
		{"audit", "verify", "--dir", f.dir, "--pubkey", f.segment},
		{"audit", "verify", "--dir", f.dir, "--pubkey", f.pubFile, "--anchor", garbage},
		{"audit", "tail", "--since", "yesterday"},
		{"audit", "report", "--since", "2025-02-01", "--until", "2025-01-01"},
		{"audit", "report", "verify", "--file", garbage},
		{"audit"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			assertOneErrorLine(t, runCLI(t, nil, args...), exitUsage, local)
		})
	}
}

func TestAuditReportVerifyAcceptsSignedReportAndRejectsAnEditedCount(t *testing.T) {
	f := newAuditFixture(t, 8)
	rep, err := audit.BuildReport(f.dir, time.Time{}, time.Time{}, []string{"Decrypt"}, func(m string) bool { return m == "Decrypt" })
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.SignReport(f.key); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "report.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	inv := runCLI(t, nil, "audit", "report", "verify", "--file", file, "--pubkey", f.pubFile)
	if inv.code != exitOK || !strings.Contains(inv.stdout, "signature OK") ||
		!strings.Contains(inv.stdout, "key mail: 6 operations, 2 denied") {
		t.Fatalf("exit %d\n%s%s", inv.code, inv.stdout, inv.stderr)
	}
	// Someone "improves" the published numbers.
	edited := bytes.Replace(b, []byte(`"operations":6`), []byte(`"operations":5`), 1)
	if bytes.Equal(edited, b) {
		t.Fatal("test did not edit the report")
	}
	if err := os.WriteFile(file, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	inv = runCLI(t, nil, "audit", "report", "verify", "--file", file, "--pubkey", f.pubFile)
	assertOneErrorLine(t, inv, exitError, local)
}

func TestAnchorFileInMissingDirectoryNamesThePathOnce(t *testing.T) {
	file := filepath.Join(t.TempDir(), "no-such-dir", "anchors.jsonl")
	err := appendJSONLine(file, []byte(`{"seq":1}`))
	if err == nil {
		t.Fatal("appended to a file in a missing directory")
	}
	if n := strings.Count(err.Error(), file); n != 1 {
		t.Errorf("error %q names the path %d times, want once", err, n)
	}
}

func sha256Of(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}
