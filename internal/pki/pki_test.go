package pki

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"io"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var devRoles = []string{"relay", "operator", "officer", "auditor"}

func readCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	certs, err := parseCertsPEM(mustRead(t, file))
	if err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
	return certs[0]
}

func mustRead(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// selfSigned makes a throw-away certificate with the given URI SANs.
func selfSigned(t *testing.T, uris ...string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "t"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIdentityIsTheSingleURISAN(t *testing.T) {
	c := selfSigned(t, "spiffe://example.org/relay-1")
	got, err := Identity(c)
	if err != nil || got != "spiffe://example.org/relay-1" {
		t.Fatalf("Identity = %q, %v; want the URI SAN", got, err)
	}
}

func TestIdentityFallsBackToSPKIDigest(t *testing.T) {
	for name, uris := range map[string][]string{
		"no uri san":    nil,
		"two uri sans":  {"spiffe://example.org/a", "spiffe://example.org/b"},
		"three uri san": {"spiffe://example.org/a", "spiffe://example.org/b", "https://example.org/"},
	} {
		t.Run(name, func(t *testing.T) {
			c := selfSigned(t, uris...)
			sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
			want := "spki:" + hex.EncodeToString(sum[:])
			got, err := Identity(c)
			if err != nil || got != want {
				t.Fatalf("Identity = %q, %v; want %q", got, err, want)
			}
			if len(got) != len("spki:")+64 || strings.ToLower(got) != got {
				t.Fatalf("identity %q is not spki: + 64 lower-case hex digits", got)
			}
		})
	}
}

func TestIdentityRefusesURISANThatImitatesSPKIIdentity(t *testing.T) {
	victim := selfSigned(t)
	victimID, _ := Identity(victim)
	forged := selfSigned(t, victimID)
	if got, err := Identity(forged); !errors.Is(err, ErrIdentity) {
		t.Fatalf("Identity of a cert with URI SAN %q = %q, %v; want ErrIdentity", victimID, got, err)
	}
	if _, err := Identity(nil); !errors.Is(err, ErrIdentity) {
		t.Fatalf("Identity(nil) err = %v; want ErrIdentity", err)
	}
}

func TestGenerateDevWritesCertificatesWithRoleIdentities(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	p, err := GenerateDev(dir, devRoles)
	if err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, p.CAFile)
	if !ca.IsCA {
		t.Fatal("ca.pem is not a CA certificate")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	server := readCert(t, p.ServerCertFile)
	if _, err := server.Verify(x509.VerifyOptions{Roots: roots, DNSName: "localhost"}); err != nil {
		t.Fatalf("server cert does not verify for localhost: %v", err)
	}
	for _, ip := range []string{"127.0.0.1", "::1"} {
		if err := server.VerifyHostname(ip); err != nil {
			t.Fatalf("server cert not valid for %s: %v", ip, err)
		}
	}
	if got := server.NotAfter.Sub(server.NotBefore); got < DevValidity || got > DevValidity+time.Hour {
		t.Fatalf("server validity %v; want about %v", got, DevValidity)
	}
	if _, ok := server.PublicKey.(*ecdsa.PublicKey); !ok || server.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Fatalf("server key is %T; want ECDSA P-256", server.PublicKey)
	}

	if len(p.Clients) != len(devRoles) {
		t.Fatalf("got %d clients; want %d", len(p.Clients), len(devRoles))
	}
	for _, role := range devRoles {
		c, ok := p.Clients[role]
		if !ok {
			t.Fatalf("no client for role %s", role)
		}
		if c.CertFile != filepath.Join(dir, role+".pem") || c.KeyFile != filepath.Join(dir, role+"-key.pem") {
			t.Fatalf("role %s files %s %s", role, c.CertFile, c.KeyFile)
		}
		cert := readCert(t, c.CertFile)
		if cert.Subject.CommonName != role {
			t.Fatalf("CN = %q; want %q", cert.Subject.CommonName, role)
		}
		id, err := Identity(cert)
		want := "spiffe://custody.dev/" + role
		if err != nil || id != want || c.Identity != want {
			t.Fatalf("identity %q (reported %q), %v; want %q", id, c.Identity, err, want)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("client cert %s does not verify for client auth: %v", role, err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
			t.Fatalf("client cert %s verifies for server auth", role)
		}
	}

	for _, key := range []string{p.CAKeyFile, p.ServerKeyFile, p.Clients["relay"].KeyFile} {
		st, err := os.Stat(key)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %#o; want 0600", key, st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %#o; want 0700", st.Mode().Perm())
	}
}

func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, e := range entries {
		m[e.Name()] = mustRead(t, filepath.Join(dir, e.Name()))
	}
	return m
}

func TestGenerateDevReusesValidFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := GenerateDev(dir, devRoles); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	p, err := GenerateDev(dir, devRoles)
	if err != nil {
		t.Fatal(err)
	}
	after := snapshot(t, dir)
	if len(after) != len(before) {
		t.Fatalf("second run changed the file set: %d -> %d files", len(before), len(after))
	}
	for name, b := range before {
		if !bytes.Equal(b, after[name]) {
			t.Fatalf("second run rewrote %s", name)
		}
	}
	if p.Clients["relay"].Identity != "spiffe://custody.dev/relay" {
		t.Fatalf("reused relay identity %q", p.Clients["relay"].Identity)
	}

	// A new role is issued under the same CA; existing files stay.
	if _, err := GenerateDev(dir, append([]string{"relay-2"}, devRoles...)); err != nil {
		t.Fatal(err)
	}
	grown := snapshot(t, dir)
	for name, b := range before {
		if !bytes.Equal(b, grown[name]) {
			t.Fatalf("adding a role rewrote %s", name)
		}
	}
	ca := readCert(t, filepath.Join(dir, "ca.pem"))
	if err := readCert(t, filepath.Join(dir, "relay-2.pem")).CheckSignatureFrom(ca); err != nil {
		t.Fatalf("new role not issued by the existing CA: %v", err)
	}
}

func TestGenerateDevReplacesDamagedLeafOnly(t *testing.T) {
	dir := t.TempDir()
	if _, err := GenerateDev(dir, devRoles); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	// The relay's key is replaced by the officer's: the pair no longer matches.
	if err := os.WriteFile(filepath.Join(dir, "relay-key.pem"), before["officer-key.pem"], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateDev(dir, devRoles); err != nil {
		t.Fatal(err)
	}
	after := snapshot(t, dir)
	if bytes.Equal(before["relay.pem"], after["relay.pem"]) {
		t.Fatal("mismatched relay pair was kept")
	}
	for _, name := range []string{"ca.pem", "server.pem", "officer.pem", "auditor.pem"} {
		if !bytes.Equal(before[name], after[name]) {
			t.Fatalf("%s was rewritten though it was valid", name)
		}
	}
	if _, err := ServerTLSConfig(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"), filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, "relay.pem"), filepath.Join(dir, "relay-key.pem")); err != nil {
		t.Fatalf("regenerated relay pair does not load: %v", err)
	}
}

func TestGenerateDevRenewsEverythingWithinADayOfExpiry(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	if _, err := generateDev(dir, devRoles, start); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)
	// 29.5 days later every certificate has under 24 h left.
	later := start.Add(DevValidity - 12*time.Hour)
	if _, err := generateDev(dir, devRoles, later); err != nil {
		t.Fatal(err)
	}
	after := snapshot(t, dir)
	for name := range before {
		if strings.HasSuffix(name, ".pem") && !strings.HasSuffix(name, "-key.pem") && bytes.Equal(before[name], after[name]) {
			t.Fatalf("%s was reused with under 24h left", name)
		}
	}
	if got := readCert(t, filepath.Join(dir, "relay.pem")).NotAfter; got.Sub(later) < DevValidity-time.Minute {
		t.Fatalf("renewed relay cert expires %v; want about %v after %v", got, DevValidity, later)
	}
}

func TestGenerateDevRejectsBadRoles(t *testing.T) {
	for _, roles := range [][]string{{"Relay"}, {"ca"}, {"server"}, {"relay", "relay"}, {""}, {"../x"}} {
		if _, err := GenerateDev(t.TempDir(), roles); !errors.Is(err, ErrInvalid) {
			t.Errorf("GenerateDev(%q) err = %v; want ErrInvalid", roles, err)
		}
	}
}

// handshake runs one TLS 1.3 connection over loopback and returns the
// server's and the client's error and the identity the server derived.
func handshake(t *testing.T, server, client *tls.Config) (srvErr, cliErr error, id string) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	type result struct {
		err error
		id  string
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		if err := tc.HandshakeContext(ctx); err != nil {
			done <- result{err: err}
			return
		}
		peer := tc.ConnectionState().PeerCertificates
		id, err := Identity(peer[0])
		if err == nil {
			_, err = tc.Write([]byte("ok"))
		}
		done <- result{err: err, id: id}
	}()

	d := tls.Dialer{Config: client}
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		// In TLS 1.3 the server rejects a client certificate after the
		// client's handshake has finished; the client sees it on read.
		_, err = io.ReadFull(conn, make([]byte, 2))
		conn.Close()
	}
	r := <-done
	return r.err, err, r.id
}

func TestMutualTLSHandshakeWithDevCertificates(t *testing.T) {
	p, err := GenerateDev(t.TempDir(), devRoles)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ServerTLSConfig(p.ServerCertFile, p.ServerKeyFile, p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	relay := p.Clients["relay"]
	cli, err := ClientTLSConfig(p.CAFile, relay.CertFile, relay.KeyFile, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srvErr, cliErr, id := handshake(t, srv, cli)
	if srvErr != nil || cliErr != nil {
		t.Fatalf("handshake failed: server %v, client %v", srvErr, cliErr)
	}
	if id != relay.Identity {
		t.Fatalf("server derived identity %q; want %q", id, relay.Identity)
	}
}

func TestMutualTLSRejectsClientFromAnotherCA(t *testing.T) {
	p, err := GenerateDev(t.TempDir(), devRoles)
	if err != nil {
		t.Fatal(err)
	}
	other, err := GenerateDev(t.TempDir(), []string{"relay"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ServerTLSConfig(p.ServerCertFile, p.ServerKeyFile, p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	// The intruder trusts the real CA, so only its own certificate is wrong.
	cli, err := ClientTLSConfig(p.CAFile, other.Clients["relay"].CertFile, other.Clients["relay"].KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	srvErr, cliErr, id := handshake(t, srv, cli)
	if srvErr == nil || cliErr == nil {
		t.Fatalf("handshake with a foreign client cert: server err %v, client err %v, identity %q; want both to fail", srvErr, cliErr, id)
	}
}

func TestMutualTLSRejectsServerFromAnotherCA(t *testing.T) {
	p, err := GenerateDev(t.TempDir(), devRoles)
	if err != nil {
		t.Fatal(err)
	}
	other, err := GenerateDev(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ServerTLSConfig(other.ServerCertFile, other.ServerKeyFile, p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ClientTLSConfig(p.CAFile, p.Clients["relay"].CertFile, p.Clients["relay"].KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	_, cliErr, _ := handshake(t, srv, cli)
	var unknown x509.UnknownAuthorityError
	if !errors.As(cliErr, &unknown) {
		t.Fatalf("client err = %v; want x509.UnknownAuthorityError", cliErr)
	}
}

func TestMutualTLSRequiresAClientCertificate(t *testing.T) {
	p, err := GenerateDev(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ServerTLSConfig(p.ServerCertFile, p.ServerKeyFile, p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ClientTLSConfig(p.CAFile, p.ServerCertFile, p.ServerKeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cli.Certificates = nil
	srvErr, _, _ := handshake(t, srv, cli)
	if srvErr == nil {
		t.Fatal("server accepted a client without a certificate")
	}
}

func TestTLSConfigsRequireTLS13(t *testing.T) {
	p, err := GenerateDev(t.TempDir(), []string{"relay"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ServerTLSConfig(p.ServerCertFile, p.ServerKeyFile, p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if srv.MinVersion != tls.VersionTLS13 || srv.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("server config MinVersion %x ClientAuth %v", srv.MinVersion, srv.ClientAuth)
	}
	cli, err := ClientTLSConfig(p.CAFile, p.Clients["relay"].CertFile, p.Clients["relay"].KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cli.MinVersion, cli.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	srvErr, _, _ := handshake(t, srv, cli)
	if srvErr == nil {
		t.Fatal("server accepted TLS 1.2")
	}
}

func TestTLSConfigRejectsBadFiles(t *testing.T) {
	p, err := GenerateDev(t.TempDir(), []string{"relay"})
	if err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(notPEM, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func() error{
		"missing ca": func() error {
			_, err := ServerTLSConfig(p.ServerCertFile, p.ServerKeyFile, filepath.Join(p.Dir, "nope.pem"))
			return err
		},
		"junk ca": func() error {
			_, err := ServerTLSConfig(p.ServerCertFile, p.ServerKeyFile, notPEM)
			return err
		},
		"key as ca": func() error {
			_, err := ServerTLSConfig(p.ServerCertFile, p.ServerKeyFile, p.ServerKeyFile)
			return err
		},
		"mismatched pair": func() error {
			_, err := ServerTLSConfig(p.ServerCertFile, p.Clients["relay"].KeyFile, p.CAFile)
			return err
		},
		"no server name": func() error {
			_, err := ClientTLSConfig(p.CAFile, p.Clients["relay"].CertFile, p.Clients["relay"].KeyFile, "")
			return err
		},
	}
	for name, f := range cases {
		if err := f(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v; want ErrInvalid", name, err)
		}
	}
	// Errors name files, never key material.
	key := string(mustRead(t, p.Clients["relay"].KeyFile))
	body := strings.Split(key, "\n")[1]
	if err := cases["mismatched pair"](); strings.Contains(err.Error(), body) {
		t.Fatal("error contains key material")
	}
}
