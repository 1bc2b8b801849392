package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/policy"
)

// ceremonyDir writes three officer keys and a ceremony.yaml built from
// body (with {{alice}}, {{bob}}, {{carol}} replaced by .pub file names).
func ceremonyDir(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"alice", "bob", "carol"} {
		if inv := keygen(t, "--out", filepath.Join(dir, n+".key")); inv.code != exitOK {
			t.Fatal(inv)
		}
	}
	path := filepath.Join(dir, "ceremony.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const goodCeremony = `threshold: 2
officers:
  - name: alice
    public_key: alice.key.pub
  - name: bob
    public_key: bob.key.pub
  - name: carol
    public_key: carol.key.pub
keys:
  - name: relay-messages
    purpose: encrypt
    description: per-message data keys
grants:
  - id: g-relay
    identity: spiffe://acme/relay
    key: relay-messages
    operations: [datakey, unwrap]
    context_match: {tenant: acme}
    allow_plaintext: true
budgets:
  - identity: spiffe://acme/relay
    key: relay-messages
    rate: 10
    burst: 50
    volume: 10000
    window: 24h
`

func TestCeremonyConfigBuildsTheDeclaredRequest(t *testing.T) {
	path := ceremonyDir(t, goodCeremony)
	req, err := loadCeremony(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if req.GetThreshold() != 2 || len(req.GetOfficers()) != 3 || req.GetAllowDev() {
		t.Fatalf("request %v", req)
	}
	alice, _ := readOfficerPublicKey(filepath.Join(filepath.Dir(path), "alice.key.pub"))
	if got := req.GetOfficers()[0]; got.GetName() != "alice" || string(got.GetPublicKeyDer()) != string(alice.PublicKey) {
		t.Errorf("officer 0 = %v, want alice's key from alice.key.pub", got)
	}
	if k := req.GetKeys()[0]; k.GetPurpose() != custodyv1.KeyPurpose_ENCRYPT_AES256_GCM {
		t.Errorf("key purpose %v", k.GetPurpose())
	}
	if b := req.GetBudgets()[0]; b.GetWindow().AsDuration() != 24*time.Hour || b.GetVolume() != 10000 {
		t.Errorf("budget %v", b)
	}
	if g := req.GetGrants()[0]; g.GetContextMatch()["tenant"] != "acme" || len(g.GetOperations()) != 2 {
		t.Errorf("grant %v", g)
	}
}

func TestCeremonyConfigErrorsNameTheFieldPath(t *testing.T) {
	for _, tc := range []struct {
		name, edit, want string
		dev              bool
	}{
		{"unknown field", strings.Replace(goodCeremony, "    public_key: bob.key.pub", "    public_key: bob.key.pub\n    pubkey: x", 1), "officers[1].pubkey: unknown field", false},
		{"wrong type", strings.Replace(goodCeremony, "burst: 50", "burst: lots", 1), "budgets[0].burst (line", false},
		{"missing key file", strings.Replace(goodCeremony, "carol.key.pub", "dave.key.pub", 1), "officers[2].public_key:", false},
		{"M of 1 without dev", strings.Replace(goodCeremony, "threshold: 2", "threshold: 1", 1), "threshold: must be at least 2", false},
		{"M above N", strings.Replace(goodCeremony, "threshold: 2", "threshold: 4", 1), "threshold: 4 exceeds the 3 officers", true},
		{"duplicate officer", strings.Replace(goodCeremony, "name: bob", "name: alice", 1), "officers[1].name: duplicate", false},
		{"shared officer key", strings.Replace(goodCeremony, "bob.key.pub", "alice.key.pub", 1), "officers[1].public_key: shared", false},
		{"bad purpose", strings.Replace(goodCeremony, "purpose: encrypt", "purpose: rot13", 1), "keys[0].purpose:", false},
		{"grant on undeclared key", strings.Replace(goodCeremony, "    key: relay-messages\n    operations", "    key: other\n    operations", 1), "grants[0].key:", false},
		{"wildcard grant", strings.Replace(goodCeremony, "    key: relay-messages\n    operations", "    key: \"*\"\n    operations", 1), "grants[0].key: invalid name: wildcards", false},
		{"bad operation", strings.Replace(goodCeremony, "[datakey, unwrap]", "[datakey, approve]", 1), "grants[0].operations[1]", false},
		{"grant that can never return a data key", strings.Replace(goodCeremony, "    allow_plaintext: true\n", "", 1),
			"grants[0]: grant \"g-relay\" gives datakey and unwrap on key \"relay-messages\" but no way to receive a data key: add recipient_keys", false},
		{"bad window", strings.Replace(goodCeremony, "window: 24h", "window: a day", 1), "budgets[0].window:", false},
		{"zero volume", strings.Replace(goodCeremony, "volume: 10000", "volume: 0", 1), "budgets[0].volume:", false},
		{"two documents", goodCeremony + "---\nthreshold: 3\n", "more than one YAML document", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadCeremony(ceremonyDir(t, tc.edit), tc.dev)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	// M = 1 is accepted with --dev.
	if _, err := loadCeremony(ceremonyDir(t, strings.Replace(goodCeremony, "threshold: 2", "threshold: 1", 1)), true); err != nil {
		t.Fatalf("M=1 with --dev: %v", err)
	}
}

// signedTranscript makes a transcript directory signed by a software ECDSA
// key standing in for the HSM audit key.
func signedTranscript(t *testing.T, tr Transcript) (dir string, audit *ecdsa.PrivateKey) {
	t.Helper()
	audit, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := json.MarshalIndent(tr, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(doc)
	sig, err := ecdsa.SignASN1(rand.Reader, audit, h[:])
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&audit.PublicKey)
	dir = filepath.Join(t.TempDir(), "transcript")
	if err := prepareTranscriptDir(dir); err != nil {
		t.Fatal(err)
	}
	if err := writeTranscript(dir, &custodyv1.CeremonyTranscript{Json: doc, Text: "text", Signature: sig, AuditPublicKeyDer: pub}); err != nil {
		t.Fatal(err)
	}
	return dir, audit
}

func sampleTranscript(t *testing.T) Transcript {
	t.Helper()
	dir := t.TempDir()
	var officers []TranscriptOfficer
	for _, n := range []string{"alice", "bob"} {
		if inv := keygen(t, "--out", filepath.Join(dir, n)); inv.code != exitOK {
			t.Fatal(inv)
		}
		o, err := readOfficerPublicKey(filepath.Join(dir, n+".pub"))
		if err != nil {
			t.Fatal(err)
		}
		officers = append(officers, TranscriptOfficer{Name: n, Fingerprint: o.Fingerprint(), PublicKey: o.PublicKey})
	}
	at := time.Date(2025, 6, 1, 9, 0, 0, 0, time.UTC)
	safe := TranscriptAttr{Token: true, Private: true, Sensitive: true, AlwaysSensitive: true, NeverExtractable: true, Local: true}
	return Transcript{
		Format: TranscriptFormat, Instance: "custodyd-test", Created: at, Threshold: 2, Officers: officers,
		Keys:    []TranscriptKey{{Name: "relay-messages", Purpose: "encrypt-aes256-gcm", Version: 1, HSMID: "0a1b2c3d", Attributes: safe}},
		Grants:  []policy.Grant{{ID: "g-relay", Identity: "spiffe://acme/relay", Key: "relay-messages", Operations: []policy.Op{policy.OpUnwrap}}},
		Budgets: []TranscriptBudget{{Identity: "spiffe://acme/relay", Key: "relay-messages", Rate: 10, Burst: 50, Volume: 10000, Window: "24h0m0s"}},
		Steps:   []TranscriptStep{{N: 1, Time: at, Action: "declare-officers", Detail: "2 of 2"}},
	}
}

func TestCeremonyVerifyAcceptsSignedTranscriptAndPrintsFingerprints(t *testing.T) {
	tr := sampleTranscript(t)
	dir, _ := signedTranscript(t, tr)
	inv := runCLI(t, nil, "ceremony", "verify", "--dir", dir)
	if inv.code != exitOK {
		t.Fatalf("verify: %+v", inv)
	}
	for _, want := range []string{"signature:  OK", tr.Officers[0].Fingerprint, tr.Officers[1].Fingerprint, "relay-messages", "ok (token, private"} {
		if !strings.Contains(inv.stdout, want) {
			t.Errorf("verify output lacks %q:\n%s", want, inv.stdout)
		}
	}
}

func TestCeremonyVerifyRejectsOneByteEdit(t *testing.T) {
	dir, _ := signedTranscript(t, sampleTranscript(t))
	path := filepath.Join(dir, fileTranscriptJSON)
	doc, _ := os.ReadFile(path)
	i := strings.Index(string(doc), `"threshold": 2`) + len(`"threshold": `)
	doc[i] = '1'
	if err := os.WriteFile(path, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	inv := runCLI(t, nil, "ceremony", "verify", "--dir", dir)
	assertOneErrorLine(t, inv, exitError, local)
	if !strings.Contains(inv.stderr, "signature does not verify") || inv.stdout != "" {
		t.Errorf("edited transcript: stdout %q stderr %q", inv.stdout, inv.stderr)
	}
}

func TestCeremonyVerifyRejectsTranscriptUnderAnotherAuditKey(t *testing.T) {
	dir, _ := signedTranscript(t, sampleTranscript(t))
	otherDir, _ := signedTranscript(t, sampleTranscript(t))
	inv := runCLI(t, nil, "ceremony", "verify", "--dir", dir, "--pubkey", filepath.Join(otherDir, fileAuditPubKey))
	assertOneErrorLine(t, inv, exitError, local)
}

func TestCeremonyVerifyFailsOnExtractableKey(t *testing.T) {
	tr := sampleTranscript(t)
	tr.Keys[0].Attributes.Extractable = true
	tr.Keys[0].Attributes.NeverExtractable = false
	dir, _ := signedTranscript(t, tr)
	inv := runCLI(t, nil, "ceremony", "verify", "--dir", dir)
	if inv.code != exitError || !strings.Contains(inv.stdout, "WARNING") || !strings.Contains(inv.stderr, "unsafe HSM attributes on relay-messages v1") {
		t.Fatalf("extractable key: %+v", inv)
	}
}

func TestTranscriptDirIsNeverOverwritten(t *testing.T) {
	dir, _ := signedTranscript(t, sampleTranscript(t))
	if err := prepareTranscriptDir(dir); err == nil {
		t.Fatal("a directory holding a transcript was accepted for a new one")
	}
}
