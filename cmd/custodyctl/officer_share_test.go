package main

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/seal"
)

func TestKeygenWritesAShareKeyBesideTheSigningKey(t *testing.T) {
	dir := t.TempDir()
	pass := filepath.Join(dir, "pass")
	os.WriteFile(pass, []byte("correct horse battery\n"), 0o600)
	out := filepath.Join(dir, "alice")
	inv := keygen(t, "--out", out, "--passphrase-file", pass)
	if inv.code != exitOK {
		t.Fatalf("keygen: %+v", inv)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(inv.stdout), &got); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out + ".share")
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("share key file: %v %v", st, err)
	}
	raw, _ := os.ReadFile(out + ".share")
	if b, _ := pem.Decode(raw); b == nil || b.Type != pemEncryptedKey {
		t.Fatal("share key is not encrypted under the passphrase")
	}
	pub, err := readSharePublicKey(out + ".share.pub")
	if err != nil {
		t.Fatal(err)
	}
	if got["share_fingerprint"] != seal.Fingerprint(pub) {
		t.Fatalf("printed share fingerprint %q, file has %q", got["share_fingerprint"], seal.Fingerprint(pub))
	}
	sig, _ := readOfficerPublicKey(out + ".pub")
	if bytes.Equal(sig.PublicKey, pub) {
		t.Fatal("share key is the signing key")
	}
	// It opens with the passphrase, and only with it.
	k, err := loadShareKeyFile(out+".share", []byte("correct horse battery"))
	if err != nil {
		t.Fatal(err)
	}
	if mine, _ := seal.MarshalPublicKey(k.PublicKey()); !bytes.Equal(mine, pub) {
		t.Fatal("private and public share keys differ")
	}
	if _, err := loadShareKeyFile(out+".share", []byte("wrong passphrase")); !errors.Is(err, errWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	// A signing key's file is not a share key, and neither is its .pub.
	if _, err := loadShareKeyFile(out, []byte("correct horse battery")); err == nil {
		t.Fatal("signing key accepted as a share key")
	}
	if sig.Fingerprint() == "" || keyTypeName(sig.PublicKey) != "ed25519" {
		t.Fatal("signing key type changed")
	}
	if _, err := readSharePublicKey(out + ".pub"); err == nil {
		t.Fatal("ed25519 signing key accepted as a share public key")
	}
	// Nothing is overwritten: a second keygen to the same name fails whole.
	if inv := keygen(t, "--out", out, "--passphrase-file", pass); inv.code == exitOK {
		t.Fatal("keygen overwrote an officer's keys")
	}
	// share-keygen alone.
	if inv := runCLI(t, nil, "officer", "share-keygen", "--out", filepath.Join(dir, "bob.share")); inv.code != exitOK {
		t.Fatalf("share-keygen: %+v", inv)
	}
}

// TestTokenShareKeyDecryptsItsShareOnTheToken: an officer's share key is a
// P-256 key pair with CKA_DERIVE on their PKCS#11 token; the ECDH for the
// share runs on the token, and the public half is exported for the
// ceremony with officer share-pub.
func TestTokenShareKeyDecryptsItsShareOnTheToken(t *testing.T) {
	bin := builtCLI(t)
	tok := hsmtest.New(t)
	cmd := exec.Command("pkcs11-tool", "--module", tok.Library, "--token-label", tok.Label, "--login", "--pin", tok.PIN,
		"--keypairgen", "--key-type", "EC:prime256v1", "--usage-derive", "--label", "alice-share", "--id", "0c0d")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	uri := "pkcs11:token=" + tok.Label + ";object=alice-share?module-path=" + tok.Library
	pubFile := filepath.Join(t.TempDir(), "alice.share.pub")
	export := exec.Command(bin, "officer", "share-pub", "--share-pkcs11", uri, "--officer-pin-env", "OFFICER_PIN", "--out", pubFile)
	export.Env = append(os.Environ(), "OFFICER_PIN="+tok.PIN)
	if out, err := export.CombinedOutput(); err != nil {
		t.Fatalf("share-pub: %v\n%s", err, out)
	}
	pub, err := readSharePublicKey(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	// custodyd's side: split a PIN with the token key as one holder.
	other, _ := ecdh.P256().GenerateKey(rand.Reader)
	otherPub, _ := seal.MarshalPublicKey(other.PublicKey())
	id, _ := seal.NewVaultID()
	ref := seal.VaultRef{VaultID: id, Epoch: 1}
	okey, _ := x509.MarshalPKIXPublicKey(other.PublicKey())
	envs, _, err := seal.Split(ref, []byte("a-pin-nobody-sees-0123456789"), 2, []seal.Holder{
		{Officer: "alice", OfficerKey: okey, ShareKey: pub}, {Officer: "bob", OfficerKey: []byte("b"), ShareKey: otherPub}})
	if err != nil {
		t.Fatal(err)
	}
	// The officer's side, in this process (no other PKCS#11 user here).
	t.Setenv("OFFICER_PIN", tok.PIN)
	k, err := openTokenShareKey(uri, "OFFICER_PIN")
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	sh, err := seal.OpenShare(k, ref, envs[0])
	if err != nil {
		t.Fatalf("token share key cannot open its share: %v", err)
	}
	defer sh.Destroy()
	if sh.Len() != len("a-pin-nobody-sees-0123456789")+1 || sh.Bytes()[0] != byte(envs[0].Index) {
		t.Fatalf("share of %d bytes", sh.Len())
	}
	if _, err := seal.OpenShare(k, ref, envs[1]); !errors.Is(err, seal.ErrWrongTarget) {
		t.Fatalf("bob's share with alice's token key: %v", err)
	}
}
