package client

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" // RSA-OAEP-SHA1: the only OAEP SoftHSM offers; OAEP does not rely on SHA-1 collision resistance
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"os"
)

// Key-transport wrapping algorithms, as custodyd names them in
// recipient_wrapping.
const (
	WrappingRSAOAEPSHA1   = "RSA-OAEP-SHA1"
	WrappingRSAOAEPSHA256 = "RSA-OAEP-SHA256"
)

// MinRelayKeyBits is the smallest relay RSA key this package makes or loads.
const MinRelayKeyBits = 3072

var (
	// ErrWeakKey means an RSA key is smaller than MinRelayKeyBits.
	ErrWeakKey = errors.New("rsa key too small")
	// ErrKeyFile means a relay key file is unusable: wrong permissions,
	// not PEM, or not an RSA private key.
	ErrKeyFile = errors.New("unusable relay key file")
	// ErrUnsupportedWrapping means the wrapping algorithm is not one this
	// package can undo.
	ErrUnsupportedWrapping = errors.New("unsupported key wrapping")
	// ErrTransport means a transported key did not decrypt: it was wrapped
	// to another key, altered, or named the wrong algorithm.
	ErrTransport = errors.New("transported key does not decrypt with this relay key")
)

// GenerateRelayKey makes an RSA key pair for key transport: custodyd wraps
// data keys to its public half inside the HSM, so they never exist in
// custodyd's memory. bits must be at least MinRelayKeyBits.
func GenerateRelayKey(bits int) (*rsa.PrivateKey, error) {
	if bits < MinRelayKeyBits {
		return nil, fmt.Errorf("%w: %d bits, want at least %d", ErrWeakKey, bits, MinRelayKeyBits)
	}
	return rsa.GenerateKey(rand.Reader, bits)
}

// RelayPublicKeyDER returns the DER PKIX (SubjectPublicKeyInfo) encoding of
// the relay key's public half, as GenerateDataKeyRequest and UnwrapRequest
// take it in recipient_public_key.
func RelayPublicKeyDER(priv *rsa.PrivateKey) ([]byte, error) {
	return x509.MarshalPKIXPublicKey(&priv.PublicKey)
}

// SaveRelayKey writes priv to path as a PEM "PRIVATE KEY" (PKCS #8) block
// with mode 0600. It refuses to overwrite an existing file: losing a relay
// key loses every data key transported to it.
func SaveRelayKey(path string, priv *rsa.PrivateKey) (err error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("encode relay key: %w", err)
	}
	defer clear(der)
	block := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	defer clear(block)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("save relay key: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("save relay key: %w", cerr)
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	if _, err := f.Write(block); err != nil {
		return fmt.Errorf("save relay key: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("save relay key: %w", err)
	}
	return nil
}

// LoadRelayKey reads an RSA private key written by SaveRelayKey (PEM
// "PRIVATE KEY" or "RSA PRIVATE KEY"). It refuses a file that group or
// others can read or write, and keys below MinRelayKeyBits.
func LoadRelayKey(path string) (*rsa.PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o, want no group or other access (0600)", ErrKeyFile, path, perm)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyFile, err)
	}
	defer clear(data)
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: %s holds no PEM block", ErrKeyFile, path)
	}
	defer clear(block.Bytes)
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: %s holds a %q PEM block, want PRIVATE KEY", ErrKeyFile, path, block.Type)
	}
	if err != nil {
		// The parser's message describes the structure, never key bytes.
		return nil, fmt.Errorf("%w: %s: %w", ErrKeyFile, path, err)
	}
	priv, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: %s holds a %T, want an RSA key", ErrKeyFile, path, key)
	}
	if bits := priv.N.BitLen(); bits < MinRelayKeyBits {
		return nil, fmt.Errorf("%w: %s is %d bits, want at least %d", ErrWeakKey, path, bits, MinRelayKeyBits)
	}
	return priv, nil
}

// DecryptTransported recovers a data key that custodyd wrapped to the
// relay's public key (recipient_wrapped_key), given the algorithm custodyd
// reported (recipient_wrapping). The caller zeroes the returned key.
func DecryptTransported(priv *rsa.PrivateKey, wrapped []byte, wrapping string) ([]byte, error) {
	var h hash.Hash
	switch wrapping {
	case WrappingRSAOAEPSHA1:
		h = sha1.New()
	case WrappingRSAOAEPSHA256:
		h = sha256.New()
	default:
		return nil, fmt.Errorf("%w: %q (want %s or %s)", ErrUnsupportedWrapping, wrapping, WrappingRSAOAEPSHA1, WrappingRSAOAEPSHA256)
	}
	if priv.N.BitLen() < MinRelayKeyBits {
		return nil, fmt.Errorf("%w: %d bits", ErrWeakKey, priv.N.BitLen())
	}
	// OAEP with MGF1 over the same hash, no label: what PKCS#11
	// CKM_RSA_PKCS_OAEP with CKG_MGF1_SHA* and no source data produces.
	key, err := rsa.DecryptOAEP(h, rand.Reader, priv, wrapped, nil)
	if err != nil {
		// Do not say why: OAEP failures must stay indistinguishable.
		return nil, ErrTransport
	}
	if len(key) != DataKeySize {
		clear(key)
		return nil, fmt.Errorf("%w: transported key is %d bytes, want %d", ErrBadResponse, len(key), DataKeySize)
	}
	return key, nil
}
