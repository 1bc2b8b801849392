package hsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Candidate locations of NSS softokn, the PKCS#11 module inside NSS.
var nssLibPaths = []string{
	"/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
	"/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
	"/usr/lib64/libsoftokn3.so",
	"/usr/lib/libsoftokn3.so",
}

// NSSInstallHint says how to get NSS softokn and certutil on Debian.
const NSSInstallHint = "NSS softokn is not installed: run `make deps` (or `apt-get install -y libnss3 libnss3-tools`)"

// NSSTokenLabel is the label of the token in an NSS database.
const NSSTokenLabel = "NSS Certificate DB"

// NSSLibrary returns the path of libsoftokn3.so, or "" when absent.
func NSSLibrary() string {
	if p := os.Getenv("CUSTODY_NSS_LIB"); p != "" {
		return p
	}
	for _, p := range nssLibPaths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// NSSInitArgs is the C_Initialize argument that points softokn at the
// database in dir.
func NSSInitArgs(dir string) string {
	return fmt.Sprintf("configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags=", dir)
}

// NewNSS creates an NSS database in a temp dir (certutil -N, with a
// password that is the token's user PIN). The token is loaded directly
// from libsoftokn3.so with init arguments naming the database.
func NewNSS(t testing.TB) *Token {
	t.Helper()
	lib := NSSLibrary()
	if lib == "" {
		t.Fatal(NSSInstallHint)
	}
	certutil, err := exec.LookPath("certutil")
	if err != nil {
		t.Fatal(NSSInstallHint)
	}
	dir := t.TempDir()
	tok := &Token{
		Kind:     NSS,
		Profile:  "nss",
		Dir:      dir,
		TokenDir: filepath.Join(dir, "db"),
		Label:    NSSTokenLabel,
		PIN:      "nss-test-pin-1234",
		Library:  lib,
	}
	if err := os.MkdirAll(tok.TokenDir, 0o700); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "password")
	if err := os.WriteFile(pw, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(certutil, "-N", "-d", "sql:"+tok.TokenDir, "-f", pw)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("certutil -N: %v\n%s", err, out)
	}
	if err := os.Remove(pw); err != nil {
		t.Fatal(err)
	}
	tok.InitArgs = NSSInitArgs(tok.TokenDir)
	tok.URI = "pkcs11:token=NSS%20Certificate%20DB?module-path=" + lib
	return tok
}

// fipsShim is a PKCS#11 module of three lines: its C_GetFunctionList
// returns softokn's FC_GetFunctionList, the entry point of NSS's FIPS 140
// mode, which miekg/pkcs11 (it looks up C_GetFunctionList only) cannot
// reach otherwise. Every call after that goes to the real softokn.
const fipsShim = `#include <dlfcn.h>
typedef unsigned long ck_rv;
typedef ck_rv (*get_fn)(void **);
ck_rv C_GetFunctionList(void **list) {
	void *h = dlopen(SOFTOKN, RTLD_NOW);
	if (h == 0) return 5;
	get_fn f = (get_fn)dlsym(h, "FC_GetFunctionList");
	if (f == 0) return 5;
	return f(list);
}
`

// NewNSSFIPS is NewNSS with softokn in FIPS mode (token "NSS FIPS 140-2
// Certificate DB"), through a shim module compiled with gcc. In FIPS mode
// softokn refuses keys whose value could be read, which exercises the
// capability probe's path for tokens it cannot compare with Go.
func NewNSSFIPS(t testing.TB) *Token {
	t.Helper()
	tok := NewNSS(t)
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatal("gcc is not installed: run `make deps` (or `apt-get install -y gcc libc6-dev`)")
	}
	src := filepath.Join(tok.Dir, "fipsshim.c")
	if err := os.WriteFile(src, []byte(fipsShim), 0o600); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(tok.Dir, "libsoftokn3-fips.so")
	cmd := exec.Command(gcc, "-shared", "-fPIC", fmt.Sprintf("-DSOFTOKN=%q", tok.Library), "-o", lib, src, "-ldl")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the NSS FIPS shim: %v\n%s", err, out)
	}
	tok.Library = lib
	tok.Label = "NSS FIPS 140-2 Certificate DB"
	tok.URI = "pkcs11:token=NSS%20FIPS%20140-2%20Certificate%20DB?module-path=" + lib
	return tok
}
