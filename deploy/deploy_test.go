// Package deploy holds the deployment files (systemd unit, container file,
// example configuration, Prometheus rules); its tests check them with the
// tools that consume them.
package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSystemdUnitPassesSystemdAnalyzeVerify runs systemd's own checker on
// the unit, with ExecStart pointed at an executable that exists here.
func TestSystemdUnitPassesSystemdAnalyzeVerify(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze is missing: run softhsm-test/install.sh (apt-get install -y systemd)")
	}
	unit, err := os.ReadFile("systemd/custodyd.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/local/bin/custodyd ") {
		t.Fatal("the unit's ExecStart moved; update this test")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "custodyd.service")
	body := strings.Replace(string(unit), "ExecStart=/usr/local/bin/custodyd ", "ExecStart="+self+" ", 1)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool, "verify", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "custodyd.service:") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestContainerfileExposesEveryListener(t *testing.T) {
	b, err := os.ReadFile("Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	var ports []string
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "EXPOSE "); ok {
			ports = append(ports, strings.Fields(rest)...)
		}
	}
	for _, p := range []string{"8443", "8444", "9090"} { // gRPC, gateway, metrics
		if !slices.Contains(ports, p) {
			t.Errorf("Containerfile does not EXPOSE %s (exposes %v)", p, ports)
		}
	}
}
