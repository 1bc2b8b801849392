package server_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
)

// custodyctl builds the real CLI once per test into a temp dir.
func custodyctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "custodyctl")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/custodyhq/custody/cmd/custodyctl")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build custodyctl: %v\n%s", err, out)
	}
	return bin
}

// cli runs custodyctl as the named client against e and returns stdout,
// stderr and the exit status.
func (e *auditEnv) cli(t *testing.T, bin, client string, args ...string) (string, string, int) {
	t.Helper()
	c := e.env.Cert[client]
	full := append([]string{"--addr", e.addr, "--ca", e.env.CAFile, "--cert", c.CertFile, "--tls-key", c.KeyFile}, args...)
	cmd := exec.Command(bin, full...)
	cmd.Env = append(os.Environ(), "CUSTODY_ADDR=", "CUSTODY_CA=", "CUSTODY_CERT=", "CUSTODY_KEY=", "CUSTODY_OUTPUT=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// TestAuditorWorkflowWithCustodyctlOverMTLS is the auditor's documented
// workflow (docs/audit.md) end to end: fetch the public key, anchor a
// checkpoint off-box, export JSON lines, verify a copy offline against the
// anchor, detect truncation of the copy, and fetch and check a signed report.
func TestAuditorWorkflowWithCustodyctlOverMTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds custodyctl")
	}
	bin := custodyctl(t)
	e := startAuditEnv(t)
	e.seed(t, standardTraffic()...)
	work := t.TempDir()
	pubFile, anchors := filepath.Join(work, "audit.pem"), filepath.Join(work, "anchors.jsonl")

	if out, errs, code := e.cli(t, bin, "auditor", "audit", "pubkey", "--out", pubFile); code != 0 || !strings.Contains(out, "sha256 ") {
		t.Fatalf("audit pubkey: exit %d\n%s%s", code, out, errs)
	}
	out, errs, code := e.cli(t, bin, "auditor", "audit", "checkpoint", "--out", anchors, "--pubkey", pubFile)
	if code != 0 || !strings.Contains(out, "verified with") {
		t.Fatalf("audit checkpoint: exit %d\n%s%s", code, out, errs)
	}

	// Export is the log's own JSON lines: each record's hash re-verifies
	// against the on-disk record of the same seq.
	out, errs, code = e.cli(t, bin, "auditor", "audit", "export", "--method", "Decrypt")
	if code != 0 {
		t.Fatalf("audit export: exit %d %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := e.logged(t, audit.Filter{Method: "Decrypt"})
	if len(lines) != len(want) || len(want) != 4 {
		t.Fatalf("export gave %d lines, log has %d Decrypt records (want 4):\n%s", len(lines), len(want), out)
	}
	for i, l := range lines {
		var r audit.Record
		if err := json.Unmarshal([]byte(l), &r); err != nil || r.Seq != want[i].Seq || !bytes.Equal(r.Hash, want[i].Hash) ||
			!r.Time.Equal(want[i].Time) || !bytes.Equal(r.ContextDigest, want[i].ContextDigest) {
			t.Fatalf("export line %d = %s, log has %+v (%v)", i, l, want[i], err)
		}
	}
	if out, _, code = e.cli(t, bin, "auditor", "audit", "tail", "--key", "chat"); code != 0 ||
		!strings.Contains(out, "2 ") || !strings.Contains(out, "key=chat") || strings.Count(out, "\n") != 1 {
		t.Fatalf("audit tail --key chat: exit %d\n%s", code, out)
	}
	if _, errs, code = e.cli(t, bin, "relay", "audit", "tail"); code != 1 || !strings.HasPrefix(errs, "custodyctl: PermissionDenied: ") {
		t.Fatalf("relay audit tail: exit %d %q", code, errs)
	}

	// Offline verification of a copy, with the anchor kept off-box.
	copyDir := filepath.Join(work, "copy")
	copyLog(t, e.dir, copyDir)
	if out, errs, code = e.cli(t, bin, "auditor", "audit", "verify", "--dir", copyDir, "--pubkey", pubFile, "--anchor", anchors); code != 0 ||
		!strings.Contains(out, "1 given, 1 checked") {
		t.Fatalf("verify copy: exit %d\n%s%s", code, out, errs)
	}
	// The copy loses its last records and the checkpoints naming them.
	seg := filepath.Join(copyDir, "audit-00000000000000000001.log")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	keep := bytes.SplitAfter(b, []byte("\n"))[:4]
	if err := os.WriteFile(seg, bytes.Join(keep, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(copyDir, "checkpoints.log"))
	out, errs, code = e.cli(t, bin, "auditor", "audit", "verify", "--dir", copyDir, "--pubkey", pubFile, "--anchor", anchors)
	if code != 1 || !strings.Contains(errs, "truncated at seq 5") || !strings.Contains(out, "FAILED") {
		t.Fatalf("verify truncated copy: exit %d\n%s%s", code, out, errs)
	}

	// A signed transparency report, checked offline; a changed copy is not.
	report := filepath.Join(work, "report.json")
	if out, errs, code = e.cli(t, bin, "auditor", "audit", "report", "--since", "2000-01-01", "--out", report, "--pubkey", pubFile); code != 0 ||
		!strings.Contains(out, "key mail: 3 operations, 1 denied") {
		t.Fatalf("audit report: exit %d\n%s%s", code, out, errs)
	}
	if out, errs, code = e.cli(t, bin, "auditor", "audit", "report", "verify", "--file", report, "--pubkey", pubFile); code != 0 {
		t.Fatalf("report verify: exit %d\n%s%s", code, out, errs)
	}
	rb, _ := os.ReadFile(report)
	os.WriteFile(report, bytes.Replace(rb, []byte(`"denied":1`), []byte(`"denied":0`), 1), 0o644)
	if _, errs, code = e.cli(t, bin, "auditor", "audit", "report", "verify", "--file", report, "--pubkey", pubFile); code != 1 ||
		!strings.HasPrefix(errs, "custodyctl: ") || !strings.Contains(errs, "signature does not verify") {
		t.Fatalf("edited report verified: exit %d %q", code, errs)
	}
}

// copyLog copies a live log directory file by file, as an auditor's backup would.
func copyLog(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		if ent.Name() == "LOCK" || ent.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, ent.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// An auditor finds one context's records with the vault's keyed digest.
func TestAuditorFindsAContextsRecordsWithCustodyctl(t *testing.T) {
	bin := custodyctl(t)
	e := startAuditEnv(t)
	c := e.env.Crypto(t, "relay")
	for _, tenant := range []string{"a", "a", "b"} {
		if _, err := c.Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("m"), Context: map[string]string{"tenant": tenant}}); err != nil {
			t.Fatal(err)
		}
	}
	out, errs, code := e.cli(t, bin, "auditor", "audit", "digest", "--context", "tenant=a")
	if code != 0 || len(strings.TrimSpace(out)) != 64 {
		t.Fatalf("audit digest: exit %d %q %s", code, out, errs)
	}
	out, errs, code = e.cli(t, bin, "auditor", "--output", "json", "audit", "tail", "--method", "Encrypt", "--context", "tenant=a")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 {
		t.Fatalf("audit tail --context: exit %d, %d lines\n%s%s", code, len(lines), out, errs)
	}
	if _, errs, code := e.cli(t, bin, "relay", "audit", "digest", "--context", "tenant=a"); code == 0 || !strings.Contains(errs, "PermissionDenied") {
		t.Fatalf("a relay asked for a digest: exit %d %s", code, errs)
	}
}
