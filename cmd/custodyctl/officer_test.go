package main

import (
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/quorum"
)

func keygen(t *testing.T, args ...string) invocation {
	t.Helper()
	return runCLI(t, nil, append([]string{"--output", "json", "officer", "keygen"}, args...)...)
}

func testProposal(t *testing.T) (quorum.Proposal, quorum.Digest) {
	t.Helper()
	p, err := quorum.NewProposal(quorum.RotateKey{Name: "relay-messages"}, "operator", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return p, d
}

func TestKeygenWritesPrivateKeyOwnerOnlyAndPublicKeyBeside(t *testing.T) {
	for _, typ := range []string{"ed25519", "ecdsa-p256"} {
		t.Run(typ, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "alice.key")
			inv := keygen(t, "--out", out, "--type", typ)
			if inv.code != exitOK {
				t.Fatalf("keygen: %+v", inv)
			}
			st, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("private key mode %v, want 0600", st.Mode().Perm())
			}
			raw, _ := os.ReadFile(out)
			if b, _ := pem.Decode(raw); b == nil || b.Type != "PRIVATE KEY" {
				t.Errorf("private key file is not a PKCS#8 PEM block")
			}
			var got map[string]string
			if err := json.Unmarshal([]byte(inv.stdout), &got); err != nil {
				t.Fatal(err)
			}
			o, err := readOfficerPublicKey(out + ".pub")
			if err != nil {
				t.Fatal(err)
			}
			if got["fingerprint"] != o.Fingerprint() || len(o.Fingerprint()) != 64 {
				t.Errorf("printed fingerprint %q, public key file has %q", got["fingerprint"], o.Fingerprint())
			}
			show := runCLI(t, nil, "officer", "show", "--pub", out+".pub")
			if !strings.Contains(show.stdout, o.Fingerprint()) || !strings.Contains(show.stdout, typ) {
				t.Errorf("officer show = %q, want type %s and fingerprint %s", show.stdout, typ, o.Fingerprint())
			}
		})
	}
}

func TestKeygenRefusesToOverwriteEitherFile(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "k")
	if err := os.WriteFile(out+".pub", []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	assertOneErrorLine(t, keygen(t, "--out", out), exitError, local)
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("keygen left a private key behind after refusing: %v", err)
	}
	if b, _ := os.ReadFile(out + ".pub"); string(b) != "precious" {
		t.Errorf("existing .pub was changed to %q", b)
	}

	out2 := filepath.Join(dir, "k2")
	if inv := keygen(t, "--out", out2); inv.code != exitOK {
		t.Fatal(inv)
	}
	before, _ := os.ReadFile(out2)
	assertOneErrorLine(t, keygen(t, "--out", out2), exitError, local)
	if after, _ := os.ReadFile(out2); string(after) != string(before) {
		t.Error("second keygen replaced the private key")
	}
}

func TestEncryptedOfficerKeyRoundTripsAndRefusesWrongPassphrase(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "bob.key")
	t.Setenv("BOB_PASS", "correct horse battery staple")
	if inv := keygen(t, "--out", out, "--type", "ecdsa-p256", "--passphrase-env", "BOB_PASS"); inv.code != exitOK {
		t.Fatal(inv)
	}
	raw, _ := os.ReadFile(out)
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != pemEncryptedKey || b.Headers["KDF"] != "argon2id" {
		t.Fatalf("encrypted key block = %v", b)
	}
	if strings.Contains(string(raw), "PRIVATE KEY-----") {
		t.Error("encrypted key file also holds a plain PRIVATE KEY block")
	}
	pub, err := readOfficerPublicKey(out + ".pub")
	if err != nil {
		t.Fatal(err)
	}

	signer, err := loadOfficerKeyFile(out, []byte("correct horse battery staple"))
	if err != nil {
		t.Fatalf("load with the right passphrase: %v", err)
	}
	_, d := testProposal(t)
	sig, err := quorum.SignApproval(signer, d)
	if err != nil {
		t.Fatal(err)
	}
	if err := quorum.VerifyApproval(pub, d, sig); err != nil {
		t.Fatalf("decrypted key does not match the public key file: %v", err)
	}

	if _, err := loadOfficerKeyFile(out, []byte("correct horse battery stapler")); err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Fatalf("wrong passphrase: err = %v", err)
	}
	if _, err := loadOfficerKeyFile(out, nil); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Fatalf("no passphrase: err = %v", err)
	}

	// Weakening the KDF parameters in the header is detected, not obeyed.
	weak := strings.Replace(string(raw), "t=3,", "t=1,", 1)
	weakFile := filepath.Join(dir, "weak.key")
	if err := os.WriteFile(weakFile, []byte(weak), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOfficerKeyFile(weakFile, []byte("correct horse battery staple")); err == nil {
		t.Fatal("key with edited KDF parameters decrypted")
	}
}

func TestKeygenRefusesShortPassphraseFromFile(t *testing.T) {
	dir := t.TempDir()
	pf := filepath.Join(dir, "pass")
	if err := os.WriteFile(pf, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inv := keygen(t, "--out", filepath.Join(dir, "k"), "--passphrase-file", pf)
	assertOneErrorLine(t, inv, exitUsage, local)
	if strings.Contains(inv.stderr, "short") {
		t.Errorf("error echoes the passphrase: %q", inv.stderr)
	}
}

func TestFileSignerApprovalsVerifyUnderTheOfficersKey(t *testing.T) {
	for _, typ := range []string{"ed25519", "ecdsa-p256"} {
		t.Run(typ, func(t *testing.T) {
			dir := t.TempDir()
			out := filepath.Join(dir, "o.key")
			if inv := keygen(t, "--out", out, "--type", typ); inv.code != exitOK {
				t.Fatal(inv)
			}
			sf := signerFlags{keyFile: out}
			s, err := sf.load()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			pub, err := readOfficerPublicKey(out + ".pub")
			if err != nil {
				t.Fatal(err)
			}
			p, d := testProposal(t)
			sig, err := quorum.SignApproval(s, d)
			if err != nil {
				t.Fatal(err)
			}
			if err := quorum.VerifyApproval(pub, d, sig); err != nil {
				t.Fatalf("approval does not verify: %v", err)
			}
			if err := quorum.VerifyVeto(pub, d, sig); err == nil {
				t.Fatal("an approval verified as a veto")
			}
			// The same signature is worthless for any other proposal.
			other, _ := testProposal(t)
			od, _ := other.Digest()
			if err := quorum.VerifyApproval(pub, od, sig); err == nil {
				t.Fatalf("approval of %s verified for %s", p.ID, other.ID)
			}
		})
	}
}

func TestOfficerURIRefusesPINsAndAmbiguity(t *testing.T) {
	for _, bad := range []string{
		"pkcs11:token=t;object=k;pin-value=1234?module-path=/x.so",
		"pkcs11:token=t;object=k?module-path=/x.so&pin-source=/tmp/p",
		"pkcs11:token=t;object=k",                            // no module
		"pkcs11:token=t?module-path=/x.so",                   // no key selector
		"pkcs11:object=k?module-path=/x.so",                  // no token selector
		"pkcs11:token=t;serial=9;object=k?module-path=/x.so", // two token selectors
		"token=t;object=k?module-path=/x.so",
	} {
		if _, err := parseOfficerURI(bad); err == nil {
			t.Errorf("parseOfficerURI(%q) accepted", bad)
		}
	}
	sel, err := parseOfficerURI("pkcs11:token=officer%20card;object=alice;id=%01%02?module-path=/usr/lib/x.so")
	if err != nil {
		t.Fatal(err)
	}
	if sel.Token != "officer card" || sel.Object != "alice" || string(sel.ID) != "\x01\x02" || sel.ModulePath != "/usr/lib/x.so" {
		t.Errorf("parsed %+v", sel)
	}
}
