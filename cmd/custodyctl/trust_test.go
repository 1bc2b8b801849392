package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/quorum"
)

func writeCA(t *testing.T, path string, n int) {
	t.Helper()
	var out []byte
	for i := 0; i < n; i++ {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: "ca"}, IsCA: true,
			NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSetTrustFromConfigIsWhatCustodydComputes: the trust custodyctl
// proposes from a configuration file is exactly the trust custodyd
// computes from it (internal/config), so the file agrees with the vault
// once the proposal has executed.
func TestSetTrustFromConfigIsWhatCustodydComputes(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	writeCA(t, ca, 2)
	for _, body := range []string{
		"governance: {time_lock: 48h, freeze: {refusals: 7}}\n",
		"dev: true\ngovernance: {quorum_required: true, proposal_ttl: 100h, time_lock: 2s, freeze: {within: 5m}}\n",
		"",
	} {
		cfgFile := filepath.Join(dir, "custodyd.yaml")
		yaml := "tls: {client_ca_file: " + ca + "}\nidentities:\n" +
			"  - {name: r1, role: relay, uri: \"spiffe://t/relay\"}\n" +
			"  - {name: o1, role: officer, spki_sha256: \"" + strings.Repeat("AB", 32) + "\"}\n" + body
		if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := trustFromConfig(cfgFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Decode([]byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		cfg.ApplyDefaults()
		want, err := cfg.Trust()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("config %q:\ncustodyctl %+v\ncustodyd   %+v", body, got, want)
		}
		if d := want.Diff(got); len(d) != 0 {
			t.Errorf("differences: %s", quorum.FormatDifferences(d))
		}
	}
}

// TestCeremonyGrantsPinTheRelaysKey: a ceremony grant's spki is taken as 64
// hex digits or from the relay's certificate, and reaches the request; a
// value that is neither is refused with its field path.
func TestCeremonyGrantsPinTheRelaysKey(t *testing.T) {
	path := ceremonyDir(t, goodCeremony)
	dir := filepath.Dir(path)
	certFile := filepath.Join(dir, "relay.pem")
	writeCA(t, certFile, 1)
	raw, _ := os.ReadFile(certFile)
	blk, _ := pem.Decode(raw)
	cert, _ := x509.ParseCertificate(blk.Bytes)
	want, _ := spkiPin(hexSPKI(cert), func(p string) string { return p })
	for _, v := range []string{"relay.pem", want, strings.ToUpper(want)} {
		body := strings.Replace(goodCeremony, "    allow_plaintext: true\n", "    allow_plaintext: true\n    spki: "+v+"\n", 1)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		req, err := loadCeremony(path, false)
		if err != nil {
			t.Fatalf("spki %s: %v", v, err)
		}
		if got := req.GetGrants()[0].GetSpkiSha256(); got != want {
			t.Fatalf("spki %s: request pins %q, want %q", v, got, want)
		}
	}
	body := strings.Replace(goodCeremony, "    allow_plaintext: true\n", "    allow_plaintext: true\n    spki: nonsense\n", 1)
	os.WriteFile(path, []byte(body), 0o644)
	if _, err := loadCeremony(path, false); err == nil || !strings.Contains(err.Error(), "grants[0].spki") {
		t.Fatalf("a bad spki: %v", err)
	}
}

func hexSPKI(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}
