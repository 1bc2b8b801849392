package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"go/parser"
	"go/token"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// invocation is the outcome of one in-process custodyctl run.
type invocation struct {
	code           int
	stdout, stderr string
}

func runCLI(t *testing.T, stdin []byte, args ...string) invocation {
	t.Helper()
	// Keep the caller's environment from leaking into flag defaults.
	for _, e := range []string{envAddr, envCA, envCert, envKey, envOutput} {
		if _, set := os.LookupEnv(e); set {
			t.Setenv(e, "")
		}
	}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, bytes.NewReader(stdin), &out, &errb)
	return invocation{code, out.String(), errb.String()}
}

// assertOneErrorLine checks the documented error shape: exactly one line,
// "custodyctl: <grpc code>: <message>" for a refusal by custodyd, or, with
// grpcCode "" (local), "custodyctl: <message>" without any code name.
func assertOneErrorLine(t *testing.T, inv invocation, code int, grpcCode string) {
	t.Helper()
	if inv.code != code {
		t.Errorf("exit status %d, want %d (stderr %q)", inv.code, code, inv.stderr)
	}
	if strings.Count(inv.stderr, "\n") != 1 || !errorLineIs(inv.stderr, grpcCode) {
		t.Errorf("stderr = %q, want one line starting %q", inv.stderr, "custodyctl: "+grpcCode)
	}
}

// local is the grpcCode argument of assertOneErrorLine for a mistake found
// by custodyctl itself.
const local = ""

// errorLineIs reports whether line is custodyctl's error line for grpcCode,
// or, for local, one that names no gRPC code.
func errorLineIs(line, grpcCode string) bool {
	if grpcCode != local {
		return strings.HasPrefix(line, "custodyctl: "+grpcCode+": ")
	}
	rest, ok := strings.CutPrefix(line, "custodyctl: ")
	if !ok {
		return false
	}
	first, _, _ := strings.Cut(rest, ":")
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if first == c.String() {
			return false
		}
	}
	return true
}

func TestUsageErrorsExitTwoWithOneLine(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"key"},
		{"key", "frobnicate"},
		{"key", "get"},
		{"key", "enable", "k", "zero"},
		{"key", "disable", "k", "0"},
		{"key", "create", "k", "--purpose", "rot13"},
		{"key", "list", "--page-size", "-1"},
		{"key", "destroy", "k", "1", "--after", "soon"},
		{"crypto", "encrypt", "--nope"},
		{"crypto", "sign", "--key", "k"},
		{"crypto", "sign", "--key", "k", "--digest", "zz"},
		{"crypto", "encrypt", "--key", "k", "--context", "novalue"},
		{"crypto", "encrypt", "--key", "k", "--context", "a=1,a=2"},
		{"--output", "yaml", "status"},
	} {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			assertOneErrorLine(t, runCLI(t, nil, args...), exitUsage, local)
		})
	}
}

func TestCommandsRefuseToRunWithoutMutualTLSFiles(t *testing.T) {
	inv := runCLI(t, nil, "--cert", "c.pem", "key", "get", "k")
	assertOneErrorLine(t, inv, exitUsage, local)
	for _, want := range []string{"--ca", "--key", "CUSTODY_CA"} {
		if !strings.Contains(inv.stderr, want) {
			t.Errorf("error %q does not name missing %s", inv.stderr, want)
		}
	}
	if strings.Contains(inv.stderr, "--cert ") {
		t.Errorf("error %q names --cert, which was given", inv.stderr)
	}
}

// pki is a throwaway CA with server and client certificates on disk.
type pki struct {
	dir                       string
	caFile, certFile, keyFile string
	serverCert                tls.Certificate
	pool                      *x509.CertPool
	otherCAFile               string
}

func newCert(t *testing.T, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key, der
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	serial := int64(1)
	tmpl := func(cn string) *x509.Certificate {
		serial++
		return &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	}
	caT := tmpl("test ca")
	caT.IsCA, caT.BasicConstraintsValid, caT.KeyUsage = true, true, x509.KeyUsageCertSign
	ca, caKey, caDER := newCert(t, caT, nil, nil)

	srvT := tmpl("custodyd")
	srvT.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	srvT.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	_, srvKey, srvDER := newCert(t, srvT, ca, caKey)

	cliT := tmpl("relay-1")
	cliT.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	_, cliKey, cliDER := newCert(t, cliT, ca, caKey)

	otherT := tmpl("someone else's ca")
	otherT.IsCA, otherT.BasicConstraintsValid, otherT.KeyUsage = true, true, x509.KeyUsageCertSign
	_, _, otherDER := newCert(t, otherT, nil, nil)

	p := &pki{dir: dir, caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "client.pem"),
		keyFile: filepath.Join(dir, "client.key"), otherCAFile: filepath.Join(dir, "other-ca.pem"), pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	writePEM(t, p.caFile, "CERTIFICATE", caDER)
	writePEM(t, p.otherCAFile, "CERTIFICATE", otherDER)
	writePEM(t, p.certFile, "CERTIFICATE", cliDER)
	cliKeyDER, err := x509.MarshalECPrivateKey(cliKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.keyFile, "EC PRIVATE KEY", cliKeyDER)
	p.serverCert = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
	return p
}

// startHealthServer runs a real gRPC server with the standard health service
// behind mTLS, as custodyd exposes it, and returns its address.
func startHealthServer(t *testing.T, p *pki, maxTLS uint16, st healthpb.HealthCheckResponse_ServingStatus) string {
	t.Helper()
	cfg := &tls.Config{
		Certificates: []tls.Certificate{p.serverCert},
		ClientCAs:    p.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
		MaxVersion:   maxTLS,
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	hs := health.NewServer()
	hs.SetServingStatus("", st)
	healthpb.RegisterHealthServer(srv, hs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func (p *pki) flags(addr string) []string {
	return []string{"--addr", addr, "--ca", p.caFile, "--cert", p.certFile, "--key", p.keyFile, "--timeout", "10s"}
}

// cryptoFlags gives the client key as --tls-key, because under "crypto"
// --key names the vault key.
func (p *pki) cryptoFlags(addr string) []string {
	return []string{"--addr", addr, "--ca", p.caFile, "--cert", p.certFile, "--tls-key", p.keyFile, "--timeout", "10s"}
}

func TestStatusReportsServingOverMutualTLS(t *testing.T) {
	p := newPKI(t)
	addr := startHealthServer(t, p, tls.VersionTLS13, healthpb.HealthCheckResponse_SERVING)

	inv := runCLI(t, nil, append(p.flags(addr), "status")...)
	if inv.code != exitOK || inv.stdout != addr+" SERVING\n" || inv.stderr != "" {
		t.Fatalf("status = %+v, want exit 0 and %q", inv, addr+" SERVING\n")
	}

	inv = runCLI(t, nil, append(p.flags(addr), "--output", "json", "status")...)
	var got map[string]any
	if err := json.Unmarshal([]byte(inv.stdout), &got); err != nil || got["status"] != "SERVING" {
		t.Fatalf("json status = %q (%v), want {\"status\":\"SERVING\"}", inv.stdout, err)
	}
	if strings.Count(inv.stdout, "\n") != 1 {
		t.Errorf("json output is not one line: %q", inv.stdout)
	}
}

func TestStatusTakesSettingsFromEnvironment(t *testing.T) {
	p := newPKI(t)
	addr := startHealthServer(t, p, tls.VersionTLS13, healthpb.HealthCheckResponse_SERVING)
	var out, errb bytes.Buffer
	t.Setenv(envAddr, addr)
	t.Setenv(envCA, p.caFile)
	t.Setenv(envCert, p.certFile)
	t.Setenv(envKey, p.keyFile)
	t.Setenv(envOutput, "json")
	if code := run(context.Background(), []string{"status"}, nil, &out, &errb); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	if !strings.Contains(out.String(), `"status":"SERVING"`) {
		t.Fatalf("stdout %q is not JSON status from CUSTODY_OUTPUT=json", out.String())
	}
}

func TestStatusFailsWhenServerIsNotServing(t *testing.T) {
	p := newPKI(t)
	addr := startHealthServer(t, p, tls.VersionTLS13, healthpb.HealthCheckResponse_NOT_SERVING)
	inv := runCLI(t, nil, append(p.flags(addr), "status")...)
	assertOneErrorLine(t, inv, exitError, "Unavailable")
}

func TestClientRefusesServerOutsideItsCA(t *testing.T) {
	p := newPKI(t)
	addr := startHealthServer(t, p, tls.VersionTLS13, healthpb.HealthCheckResponse_SERVING)
	args := append(p.flags(addr), "--ca", p.otherCAFile, "status")
	assertOneErrorLine(t, runCLI(t, nil, args...), exitError, "Unavailable")
}

func TestClientRefusesTLS12Server(t *testing.T) {
	p := newPKI(t)
	addr := startHealthServer(t, p, tls.VersionTLS12, healthpb.HealthCheckResponse_SERVING)
	assertOneErrorLine(t, runCLI(t, nil, append(p.flags(addr), "status")...), exitError, "Unavailable")
}

func TestDecryptRejectsForeignFileBeforeContactingServer(t *testing.T) {
	p := newPKI(t)
	// Nothing listens at this address: the file must be refused first.
	args := append(p.cryptoFlags("127.0.0.1:1"), "crypto", "decrypt", "--key", "k")
	inv := runCLI(t, []byte("plain text, not a custody file"), args...)
	assertOneErrorLine(t, inv, exitError, local)
	if !strings.Contains(inv.stderr, "not a custody encrypted file") {
		t.Errorf("stderr %q does not say what is wrong", inv.stderr)
	}
}

func TestUnreachableServerIsOneUnavailableLine(t *testing.T) {
	p := newPKI(t)
	outDir := t.TempDir()
	args := append(p.cryptoFlags("127.0.0.1:1"), "crypto", "encrypt", "--key", "k", "--out", filepath.Join(outDir, "x.csty"))
	inv := runCLI(t, []byte("secret"), args...)
	assertOneErrorLine(t, inv, exitError, "Unavailable")
	if strings.Contains(inv.stderr, "secret") {
		t.Errorf("error line leaks plaintext: %q", inv.stderr)
	}
	if left, _ := os.ReadDir(outDir); len(left) != 0 {
		t.Errorf("failed encrypt left %d files in the output directory (first %q)", len(left), left[0].Name())
	}
}

func TestKeyTextFlagsUnsafeHSMAttributes(t *testing.T) {
	k := &custodyv1.Key{Name: "k", Purpose: custodyv1.KeyPurpose_SIGN_ED25519, PrimaryVersion: 2,
		CreateTime: timestamppb.New(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)),
		Versions: []*custodyv1.KeyVersion{
			{Version: 1, State: custodyv1.KeyVersionState_ENABLED, Attributes: &custodyv1.HsmAttributes{
				Token: true, Private: true, NeverExtractable: true, AlwaysSensitive: true, Local: true, Sensitive: true}},
			{Version: 2, State: custodyv1.KeyVersionState_ENABLED, Attributes: &custodyv1.HsmAttributes{
				Extractable: true, Sensitive: true, Local: true}},
		}}
	var b bytes.Buffer
	printKey(&b, k)
	lines := strings.Split(b.String(), "\n")
	var v1, v2 string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "1 "):
			v1 = l
		case strings.HasPrefix(l, "2 "):
			v2 = l
		}
	}
	if !strings.Contains(v1, "ok (") || strings.Contains(v1, "WARNING") {
		t.Errorf("safe version shown as %q", v1)
	}
	if !strings.Contains(v2, "WARNING") || !strings.Contains(v2, "extractable") {
		t.Errorf("extractable version shown as %q, want a WARNING", v2)
	}
	if !strings.Contains(b.String(), "2025-03-01T12:00:00Z") {
		t.Errorf("create time missing from %q", b.String())
	}
}

func TestEveryPurposeFlagMapsToADistinctAPIPurpose(t *testing.T) {
	seen := map[custodyv1.KeyPurpose]string{}
	for name, p := range purposes {
		if p == custodyv1.KeyPurpose_KEY_PURPOSE_UNSPECIFIED {
			t.Errorf("--purpose %s maps to UNSPECIFIED", name)
		}
		if other, dup := seen[p]; dup {
			t.Errorf("--purpose %s and %s both map to %s", name, other, p)
		}
		seen[p] = name
	}
	if want := len(custodyv1.KeyPurpose_name) - 1; len(seen) != want {
		t.Errorf("%d purposes reachable from the CLI, API defines %d", len(seen), want)
	}
}

// TestImportsOnlyTheAPI enforces the architecture rule that custodyctl is a
// client: of this module it may import only api/ and client/.
func TestImportsOnlyTheAPI(t *testing.T) {
	const module = "github.com/custodyhq/custody/"
	rest := func(path string) string { return strings.TrimPrefix(path, module) }
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			// Tests may also use the SoftHSM token helper and the test server.
			testOnly := strings.HasSuffix(f, "_test.go") && (rest(path) == "hsm/hsmtest" || rest(path) == "internal/testenv" || rest(path) == "internal/config")
			// hsm check loads the operator's own token through package hsm
			// (the probe custodyd runs); only that file may import it.
			hsmCheck := f == "hsmcheck.go" && rest(path) == "hsm"
			if r, ok := strings.CutPrefix(path, module); ok && !testOnly && !hsmCheck &&
				!strings.HasPrefix(r, "api/") && !strings.HasPrefix(r, "client") &&
				!pureForCLI[r] {
				t.Errorf("%s imports %s; custodyctl may import only api/, client/ and the pure packages %v (and hsm in hsmcheck.go)", f, path, slices.Sorted(maps.Keys(pureForCLI)))
			}
			// PKCS#11 directly only for an officer's share key on a token
			// (crypto11 has no key agreement).
			if path == "github.com/miekg/pkcs11" && f != "officer_token.go" {
				t.Errorf("%s imports %s", f, path)
			}
		}
	}
}

// pureForCLI are the internal packages custodyctl may import: pure (no cgo,
// no HSM, no I/O of their own). internal/audit is the offline verifier;
// internal/quorum and internal/policy build proposals and recompute digests
// where officers can see them; internal/names, internal/strictjson and internal/pkcs11uri are the
// shared name rule, JSON decoder and PKCS#11 URI parser.
var pureForCLI = map[string]bool{
	"internal/audit": true, "internal/quorum": true, "internal/policy": true,
	"internal/names": true, "internal/strictjson": true, "internal/pkcs11uri": true, "internal/version": true,
	"internal/seal": true, "internal/secmem": true,
}

// TestStatusReportsEachReplica: with several --addr, status asks each
// replica on its own and fails when any is not serving or unreachable.
func TestStatusReportsEachReplica(t *testing.T) {
	p := newPKI(t)
	up := startHealthServer(t, p, tls.VersionTLS13, healthpb.HealthCheckResponse_SERVING)
	down := startHealthServer(t, p, tls.VersionTLS13, healthpb.HealthCheckResponse_NOT_SERVING)
	inv := runCLI(t, nil, append(p.flags(up), "--addr", up, "status")...)
	if inv.code != exitOK {
		t.Fatalf("one replica twice: %+v", inv)
	}
	inv = runCLI(t, nil, append(p.flags(up+","+down), "--addr", "127.0.0.1:1", "status")...)
	if inv.code != exitError || !strings.Contains(inv.stdout, up+" SERVING\n") || !strings.Contains(inv.stdout, down+" NOT_SERVING\n") ||
		!strings.Contains(inv.stdout, "127.0.0.1:1 UNREACHABLE") || !strings.Contains(inv.stderr, "2 of 3 replicas are not serving") {
		t.Fatalf("status of three replicas: %+v", inv)
	}
}
