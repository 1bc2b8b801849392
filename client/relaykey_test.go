package client

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"hash"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

var (
	relayKeyOnce sync.Once
	relayKey     *rsa.PrivateKey
	relayKeyErr  error
)

// sharedRelayKey makes one 3072-bit key for the package's tests: RSA key
// generation is slow, and these tests do not need a fresh key each.
func sharedRelayKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	relayKeyOnce.Do(func() { relayKey, relayKeyErr = GenerateRelayKey(MinRelayKeyBits) })
	if relayKeyErr != nil {
		t.Fatal(relayKeyErr)
	}
	return relayKey
}

func TestGenerateRelayKeyRefusesWeakSizes(t *testing.T) {
	for _, bits := range []int{0, 1024, 2048, 3071} {
		if _, err := GenerateRelayKey(bits); !errors.Is(err, ErrWeakKey) {
			t.Errorf("GenerateRelayKey(%d): err = %v, want %v", bits, err, ErrWeakKey)
		}
	}
	if k := sharedRelayKey(t); k.N.BitLen() != MinRelayKeyBits {
		t.Fatalf("generated %d-bit key, want %d", k.N.BitLen(), MinRelayKeyBits)
	}
}

func TestRelayKeySavesOwnerOnlyAndLoadsBack(t *testing.T) {
	priv := sharedRelayKey(t)
	path := filepath.Join(t.TempDir(), "relay.pem")
	if err := SaveRelayKey(path, priv); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("relay key file mode %04o, want 0600", perm)
	}
	got, err := LoadRelayKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(priv) {
		t.Fatal("loaded key differs from saved key")
	}
}

func TestSaveRelayKeyRefusesToOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.pem")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := SaveRelayKey(path, sharedRelayKey(t)); err == nil {
		t.Fatal("SaveRelayKey overwrote an existing file")
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatalf("existing file changed to %d bytes", len(b))
	}
}

func TestLoadRelayKeyRefusesUnsafeOrWrongFiles(t *testing.T) {
	dir := t.TempDir()
	priv := sharedRelayKey(t)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // umask-proof
			t.Fatal(err)
		}
		return p
	}
	good := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	weak, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		path string
		want error
	}{
		"group-readable": {write("g.pem", good, 0o640), ErrKeyFile},
		"world-readable": {write("w.pem", good, 0o644), ErrKeyFile},
		"not PEM":        {write("n.pem", []byte("hello"), 0o600), ErrKeyFile},
		"certificate":    {write("c.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), 0o600), ErrKeyFile},
		"EC key":         {write("e.pem", ecPKCS8(t), 0o600), ErrKeyFile},
		"2048-bit":       {write("s.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(weak)}), 0o600), ErrWeakKey},
		"missing":        {filepath.Join(dir, "absent.pem"), ErrKeyFile},
	} {
		if _, err := LoadRelayKey(tc.path); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}
}

func ecPKCS8(t *testing.T) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(newECKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func TestDecryptTransportedUndoesBothOAEPVariants(t *testing.T) {
	priv := sharedRelayKey(t)
	dataKey := keyOf(0x5a)
	for _, tc := range []struct {
		wrapping string
		h        func() hash.Hash
	}{
		{WrappingRSAOAEPSHA1, sha1.New},
		{WrappingRSAOAEPSHA256, sha256.New},
	} {
		wrapped, err := rsa.EncryptOAEP(tc.h(), rand.Reader, &priv.PublicKey, dataKey, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecryptTransported(priv, wrapped, tc.wrapping)
		if err != nil || !bytes.Equal(got, dataKey) {
			t.Fatalf("%s: got %x, %v", tc.wrapping, got, err)
		}
		// Naming the other algorithm must fail, not return garbage.
		other := WrappingRSAOAEPSHA256
		if tc.wrapping == other {
			other = WrappingRSAOAEPSHA1
		}
		if _, err := DecryptTransported(priv, wrapped, other); !errors.Is(err, ErrTransport) {
			t.Errorf("%s decrypted as %s: err = %v", tc.wrapping, other, err)
		}
		wrapped[len(wrapped)/2] ^= 1
		if _, err := DecryptTransported(priv, wrapped, tc.wrapping); !errors.Is(err, ErrTransport) {
			t.Errorf("%s altered: err = %v, want %v", tc.wrapping, err, ErrTransport)
		}
	}
	if _, err := DecryptTransported(priv, []byte{1}, "RSA-PKCS1v15"); !errors.Is(err, ErrUnsupportedWrapping) {
		t.Errorf("unknown wrapping: err = %v, want %v", err, ErrUnsupportedWrapping)
	}
}

func TestDecryptTransportedRefusesKeysThatAreNotDataKeys(t *testing.T) {
	priv := sharedRelayKey(t)
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &priv.PublicKey, []byte("sixteen byte key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecryptTransported(priv, wrapped, WrappingRSAOAEPSHA256); !errors.Is(err, ErrBadResponse) {
		t.Fatalf("16-byte transported key: err = %v, want %v", err, ErrBadResponse)
	}
}

func TestRelayPublicKeyDERParsesAsThePublicHalf(t *testing.T) {
	priv := sharedRelayKey(t)
	der, err := RelayPublicKeyDER(priv)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.PublicKey.Equal(pub) {
		t.Fatal("DER is not the relay key's public half")
	}
}
