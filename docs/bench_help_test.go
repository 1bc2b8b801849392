package docs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchHelpExamplesRunOnMakeRun runs the examples of `custodyctl bench
// --help` that name the dev vault's key (as the dev relay, from the
// directory holding .custody-dev/), including the --baseline one that
// needs SOFTHSM2_CONF. Each is shortened to one second.
func TestBenchHelpExamplesRunOnMakeRun(t *testing.T) {
	dir := t.TempDir()
	v := startDevVault(t, dir)
	help, err := exec.Command(filepath.Join(binDir, "custodyctl"), "bench", "--help").Output()
	if err != nil {
		t.Fatal(err)
	}
	_, examples, ok := strings.Cut(string(help), "Examples:\n")
	if !ok {
		t.Fatalf("bench --help has no examples:\n%s", help)
	}
	examples, _, _ = strings.Cut(examples, "\n\n")
	var ran int
	for _, cmdline := range commands(examples) {
		cmdline, _, _ = strings.Cut(cmdline, "#")
		if !strings.Contains(cmdline, "--key demo") {
			continue
		}
		ran++
		pki := filepath.Join(dir, ".custody-dev", "pki")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-c", strings.TrimSpace(cmdline)+" --duration 1s -q")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"), "CUSTODY_ADDR="+v.grpc, "CUSTODY_CA="+filepath.Join(pki, "ca.pem"),
			"CUSTODY_CERT="+filepath.Join(pki, "relay.pem"), "CUSTODY_KEY="+filepath.Join(pki, "relay-key.pem"), "CUSTODY_OUTPUT=", "SOFTHSM2_CONF=")
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s: %v\n%s", strings.TrimSpace(cmdline), err, out)
			continue
		}
		if strings.Contains(cmdline, "--baseline") && !strings.Contains(string(out), "raw") {
			t.Errorf("%s: no raw baseline in the report:\n%s", strings.TrimSpace(cmdline), out)
		}
	}
	if ran != 3 {
		t.Fatalf("ran %d examples naming --key demo, want 3 (the plain run, the coalesced run and the --baseline run)", ran)
	}
}
