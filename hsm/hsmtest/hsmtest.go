// Package hsmtest gives each test its own PKCS#11 token in t.TempDir(): a
// SoftHSMv2 token, or an NSS softokn database (a second, independent
// PKCS#11 implementation), so the hsm suite runs against both.
//
// Every SoftHSM token has its own softhsm2.conf and token directory,
// selected with t.Setenv("SOFTHSM2_CONF", …); every NSS token is its own
// database made with certutil and loaded with init arguments naming it. Tests
// never share state and nothing is committed to the repository. When a
// token's software is not installed the test fails (it never skips) with
// the command that installs it: CI must not pass by testing nothing.
package hsmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm"
)

// Candidate locations of the SoftHSMv2 PKCS#11 library.
var libPaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// InstallHint says how to get SoftHSM on a Debian machine.
const InstallHint = "SoftHSMv2 is not installed: run `make deps` (or `apt-get install -y softhsm2`)"

// Library returns the path of the SoftHSM library, or "" when absent.
func Library() string {
	if p := os.Getenv("CUSTODY_SOFTHSM_LIB"); p != "" {
		return p
	}
	for _, p := range libPaths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// Kind is a PKCS#11 implementation tests can run on.
type Kind string

// Token kinds.
const (
	SoftHSM Kind = "softhsm"
	NSS     Kind = "nss"
)

// Kinds are the implementations every shared hsm test runs on.
var Kinds = []Kind{SoftHSM, NSS}

// Token is a freshly initialised token.
type Token struct {
	Kind     Kind
	Profile  string // hsm profile name
	InitArgs string // C_Initialize pReserved (NSS)
	Dir      string // the temp dir holding conf and tokens
	TokenDir string // directories.tokendir
	Conf     string // path of softhsm2.conf (SOFTHSM2_CONF is set to it)
	Label    string
	PIN      string
	SOPIN    string
	Library  string
	URI      string // RFC 7512 URI selecting this token
}

var counter atomic.Int64

// New creates a token labelled "custody-test-N" in a temp dir and points
// SOFTHSM2_CONF at it for the rest of the test.
func New(t testing.TB) *Token {
	t.Helper()
	lib := Library()
	if lib == "" {
		t.Fatal(InstallHint)
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		t.Fatal(InstallHint)
	}
	dir := t.TempDir()
	tok := &Token{
		Dir:      dir,
		TokenDir: filepath.Join(dir, "tokens"),
		Conf:     filepath.Join(dir, "softhsm2.conf"),
		Label:    fmt.Sprintf("custody-test-%d", counter.Add(1)),
		PIN:      "1234-test-pin",
		SOPIN:    "5678-test-so-pin",
		Library:  lib,
	}
	if err := os.MkdirAll(tok.TokenDir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\nslots.mechanisms = ALL\nlibrary.reset_on_fork = false\n", tok.TokenDir)
	if err := os.WriteFile(tok.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	cmd := exec.Command(util, "--init-token", "--free", "--label", tok.Label, "--pin", tok.PIN, "--so-pin", tok.SOPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	tok.URI = fmt.Sprintf("pkcs11:token=%s?module-path=%s", tok.Label, lib)
	tok.Kind, tok.Profile = SoftHSM, "softhsm"
	return tok
}

// NewKind creates a token of the given kind.
func NewKind(t testing.TB, kind Kind) *Token {
	t.Helper()
	switch kind {
	case SoftHSM:
		return New(t)
	case NSS:
		return NewNSS(t)
	}
	t.Fatalf("unknown token kind %q", kind)
	return nil
}

// ForEach runs fn as a subtest on a fresh token of every kind. A test that
// cannot run on some kind must not use it; see the list in the hsm tests.
func ForEach(t *testing.T, fn func(t *testing.T, tok *Token)) {
	t.Helper()
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) { fn(t, NewKind(t, kind)) })
	}
}

// Config returns an hsm.Config for the token.
func (tok *Token) Config() hsm.Config {
	return hsm.Config{URI: tok.URI, PIN: []byte(tok.PIN), RecoveryBackoffMax: 200 * time.Millisecond,
		Profile: tok.Profile, InitArgs: tok.InitArgs}
}

// Open creates a token and opens it; the module is closed when the test ends.
func Open(t testing.TB) (*hsm.Module, *Token) {
	t.Helper()
	tok := New(t)
	return tok.Open(t), tok
}

// Open logs in to the token; the module is closed when the test ends.
func (tok *Token) Open(t testing.TB) *hsm.Module {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := hsm.Open(ctx, tok.Config())
	if err != nil {
		t.Fatalf("open token %s: %v", tok.Label, err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}
