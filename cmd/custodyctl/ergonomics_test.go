package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/testenv"
)

func TestCompletionScriptsForEachShell(t *testing.T) {
	for shell, marker := range map[string]string{
		"bash": "__start_custodyctl",
		"zsh":  "#compdef custodyctl",
		"fish": "complete -c custodyctl",
	} {
		inv := runCLI(t, nil, "completion", shell)
		if inv.code != exitOK || !strings.Contains(inv.stdout, marker) {
			t.Errorf("completion %s: exit %d, stdout lacks %q (stderr %q)", shell, inv.code, marker, inv.stderr)
		}
	}
	// The completion script asks custodyctl itself for candidates.
	inv := runCLI(t, nil, "__complete", "gra")
	if inv.code != exitOK || !strings.Contains(inv.stdout, "grant") {
		t.Errorf("__complete gra: %+v", inv)
	}
}

func TestVersionNamesTheProgramAndCommit(t *testing.T) {
	inv := runCLI(t, nil, "--version")
	if inv.code != exitOK || !strings.HasPrefix(inv.stdout, "custodyctl ") || !strings.Contains(inv.stdout, " commit ") {
		t.Fatalf("--version: %+v", inv)
	}
}

func TestTyposGetADidYouMean(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"stauts"}, "did you mean status?"},
		{[]string{"grant", "lsit"}, "did you mean list?"},
		{[]string{"crypto", "encrypt", "--key", "k", "--contxt", "a=b"}, "unknown flag: --contxt; did you mean --context?"},
		{[]string{"budget", "list", "--kye", "k"}, "did you mean --key?"},
	} {
		inv := runCLI(t, nil, tc.args...)
		assertOneErrorLine(t, inv, exitUsage, local)
		if !strings.Contains(inv.stderr, tc.want) {
			t.Errorf("%v: stderr %q lacks %q", tc.args, inv.stderr, tc.want)
		}
	}
}

func TestLocalMistakesAreNotReportedAsGRPCCodes(t *testing.T) {
	p := newPKI(t)
	missing := filepath.Join(t.TempDir(), "nonexist.csty")
	inv := runCLI(t, nil, append(p.cryptoFlags("127.0.0.1:1"), "crypto", "decrypt", "--key", "k", "--in", missing)...)
	assertOneErrorLine(t, inv, exitError, local)
	if !strings.Contains(inv.stderr, "nonexist.csty: no such file or directory") || strings.Contains(inv.stderr, "NotFound") {
		t.Errorf("stderr %q", inv.stderr)
	}
}

func TestConfirmReadsOneLineAndLeavesTheRest(t *testing.T) {
	r := strings.NewReader("y\nyes\nno")
	for _, want := range []string{"y", "yes", "no", ""} {
		if got := readLine(r, 64); got != want {
			t.Fatalf("readLine = %q, want %q", got, want)
		}
	}
}

func TestEncryptAndDecryptRefuseToReplaceAnOutFileWithoutForce(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	dir := t.TempDir()
	plain, enc, dec := filepath.Join(dir, "plain"), filepath.Join(dir, "plain.csty"), filepath.Join(dir, "plain.out")
	data := []byte("the quarterly numbers")
	for f, b := range map[string][]byte{plain: data, enc: []byte("keep me"), dec: []byte("keep me too")} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	relay := as(e, "relay")
	inv := runCLI(t, nil, append(relay, "crypto", "encrypt", "--key", "demo", "--in", plain, "--out", enc)...)
	assertOneErrorLine(t, inv, exitError, local)
	if !strings.Contains(inv.stderr, "exists") || !strings.Contains(inv.stderr, "--force") {
		t.Errorf("stderr %q does not say how to replace it", inv.stderr)
	}
	if b, _ := os.ReadFile(enc); string(b) != "keep me" {
		t.Fatalf("encrypt replaced %s without --force", enc)
	}
	if inv := runCLI(t, nil, append(relay, "crypto", "encrypt", "--key", "demo", "--in", plain, "--out", enc, "--force")...); inv.code != exitOK {
		t.Fatalf("encrypt --force: %+v", inv)
	}
	inv = runCLI(t, nil, append(relay, "crypto", "decrypt", "--key", "demo", "--in", enc, "--out", dec)...)
	assertOneErrorLine(t, inv, exitError, local)
	if b, _ := os.ReadFile(dec); string(b) != "keep me too" {
		t.Fatalf("decrypt replaced %s without --force", dec)
	}
	if inv := runCLI(t, nil, append(relay, "crypto", "decrypt", "--key", "demo", "--in", enc, "--out", dec, "--force")...); inv.code != exitOK {
		t.Fatalf("decrypt --force: %+v", inv)
	}
	if b, _ := os.ReadFile(dec); !bytes.Equal(b, data) {
		t.Fatalf("decrypted %q", b)
	}
	// No temporary files are left beside the outputs.
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Errorf("%d files in the output directory, want 3", len(ents))
	}
}

func TestLargeFileEncryptionDrawsProgressOnATerminalOnly(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	dir := t.TempDir()
	big := filepath.Join(dir, "big.bin")
	data := make([]byte, progressMin+1)
	rand.Read(data)
	if err := os.WriteFile(big, data, 0o600); err != nil {
		t.Fatal(err)
	}
	relay := as(e, "relay")
	// Not a terminal (a buffer): no progress.
	inv := runCLI(t, nil, append(relay, "crypto", "encrypt", "--key", "demo", "--in", big, "--out", big+".csty")...)
	if inv.code != exitOK || strings.Contains(inv.stderr, "%") {
		t.Fatalf("encrypt without a terminal: %+v", inv)
	}
	stderrIsTerminalForTests = true
	defer func() { stderrIsTerminalForTests = false }()
	inv = runCLI(t, nil, append(relay, "crypto", "decrypt", "--key", "demo", "--in", big+".csty", "--out", big+".out")...)
	if inv.code != exitOK || !strings.Contains(inv.stderr, "decrypting "+big+".csty [") || !strings.Contains(inv.stderr, "100%") ||
		!strings.HasSuffix(inv.stderr, "\n") {
		t.Fatalf("decrypt on a terminal: exit %d stderr %q", inv.code, inv.stderr)
	}
	inv = runCLI(t, nil, append(relay, "--no-progress", "crypto", "encrypt", "--key", "demo", "--in", big, "--out", big+".2.csty")...)
	if inv.code != exitOK || strings.Contains(inv.stderr, "%") {
		t.Fatalf("encrypt --no-progress: %+v", inv)
	}
	// Small files: no progress even on a terminal.
	small := filepath.Join(dir, "small")
	os.WriteFile(small, []byte("hi"), 0o600)
	inv = runCLI(t, nil, append(relay, "crypto", "encrypt", "--key", "demo", "--in", small, "--out", small+".csty")...)
	if inv.code != exitOK || strings.Contains(inv.stderr, "%") {
		t.Fatalf("small encrypt: %+v", inv)
	}
}
