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

// TestRelayGuide runs the command-line examples of relay.md against `make
// run`'s vault.
func TestRelayGuide(t *testing.T) {
	dir := t.TempDir()
	v := startDevVault(t, dir)
	s := &session{dir: dir, subst: v.ports(), env: []string{"CUSTODY_OUTPUT="}}
	s.run(t, shellBlocks(t, "relay.md"), 5*time.Minute)
}

// TestRelayGuideGoClient builds each Go program of relay.md in a module of
// its own that requires this one (as a relay developer's program would),
// checks it does not pull in custodyd, the HSM layer or the REST gateway,
// and runs it against `make run`'s vault.
func TestRelayGuideGoClient(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	v := startDevVault(t, dir)
	pkiDir := filepath.Join(dir, ".custody-dev", "pki")
	env := append(os.Environ(), "CUSTODY_ADDR="+v.grpc, "CUSTODY_CA="+filepath.Join(pkiDir, "ca.pem"),
		"CUSTODY_CERT="+filepath.Join(pkiDir, "relay.pem"), "CUSTODY_KEY="+filepath.Join(pkiDir, "relay-key.pem"))
	// No network: every module comes from the local cache, as this module's own build does.
	goEnv := append(os.Environ(), "GOPROXY=off", "GOFLAGS=-mod=mod")

	blocks := fenced(t, "relay.md", "go")
	if len(blocks) < 2 {
		t.Fatalf("relay.md has %d Go programs, want the client walk-through and key transport", len(blocks))
	}
	for i, b := range blocks {
		mod := filepath.Join(t.TempDir(), "relay")
		if err := os.MkdirAll(mod, 0o755); err != nil {
			t.Fatal(err)
		}
		gomod := "module example.com/relay\n\ngo 1.26\n\nrequire github.com/custodyhq/custody v0.0.0\n\nreplace github.com/custodyhq/custody => " + root + "\n"
		for name, body := range map[string][]byte{"go.mod": []byte(gomod), "go.sum": sum, "main.go": []byte(b.code)} {
			if err := os.WriteFile(filepath.Join(mod, name), body, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		build := exec.CommandContext(ctx, "go", "build", "-o", "relay", ".")
		build.Dir, build.Env = mod, goEnv
		out, err := build.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s: the program does not build: %v\n%s", b.where(), err, out)
		}
		deps := exec.Command("go", "list", "-deps", ".")
		deps.Dir, deps.Env = mod, goEnv
		list, err := deps.Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range strings.Fields(string(list)) {
			for _, banned := range []string{"grpc-gateway", "github.com/miekg/pkcs11", "github.com/custodyhq/custody/internal/server", "github.com/custodyhq/custody/hsm"} {
				if strings.Contains(d, banned) {
					t.Errorf("%s: a relay program depends on %s", b.where(), d)
				}
			}
		}
		if b.compileOnly {
			continue
		}
		ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
		run := exec.CommandContext(ctx, filepath.Join(mod, "relay"))
		run.Dir, run.Env = dir, env
		got, err := run.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s: program %d failed: %v\n%s", b.where(), i, err, got)
		}
		for _, want := range []string{"opened: meet at noon", "conversation: first", "conversation: second",
			"stored data key: 32 bytes", "another tenant's context: InvalidArgument"} {
			if !strings.Contains(string(got), want) {
				t.Errorf("%s: output lacks %q (the page says it prints it):\n%s", b.where(), want, got)
			}
		}
	}
}
