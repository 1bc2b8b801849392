package main

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	"github.com/custodyhq/custody/internal/seal"
)

// An officer's share key is a P-256 key pair, separate from their signing
// key, to which custodyd encrypts their share of the HSM PIN (HPKE). The
// private half is a PKCS#8 "PRIVATE KEY" PEM file, or encrypted exactly
// like an officer key (argon2id + AES-256-GCM), or a key pair with
// CKA_DERIVE on the officer's PKCS#11 token (officer_token.go).

// shareSuffix is appended to an officer key file's name for its share key.
const shareSuffix = ".share"

// writeShareKey writes a new share key to path (0600, refusing to replace
// it) and its public half to path.pub, and returns the public key's
// fingerprint.
func writeShareKey(path string, passphrase []byte) (string, error) {
	for _, p := range []string{path, path + ".pub"} {
		if _, err := os.Lstat(p); err == nil {
			return "", localError(codes.AlreadyExists, fmt.Errorf("%s exists; refusing to overwrite it", p))
		}
	}
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return "", localError(codes.Internal, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", localError(codes.Internal, fmt.Errorf("encode share key: %w", err))
	}
	defer clear(der)
	block := &pem.Block{Type: pemPrivateKey, Bytes: der}
	if passphrase != nil {
		if block, err = sealOfficerKey(der, passphrase); err != nil {
			return "", localError(codes.Internal, err)
		}
	}
	pub, err := seal.MarshalPublicKey(k.PublicKey())
	if err != nil {
		return "", localError(codes.Internal, err)
	}
	if err := createFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", err
	}
	if err := createFile(path+".pub", pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: pub}), 0o644); err != nil {
		_ = os.Remove(path)
		return "", err
	}
	return seal.Fingerprint(pub), nil
}

// loadShareKeyFile reads a share private key (plain or encrypted).
func loadShareKeyFile(path string, passphrase []byte) (*ecdh.PrivateKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("read share key: %w", err))
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w: no PEM block", path, errKeyFormat))
	}
	der := b.Bytes
	switch b.Type {
	case pemPrivateKey:
		if len(b.Headers) != 0 {
			return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w: legacy PEM encryption is not supported", path, errKeyFormat))
		}
	case pemEncryptedKey:
		if passphrase == nil {
			return nil, usageErrorf("%s is encrypted: give --passphrase-file or --passphrase-env", path)
		}
		if der, err = openOfficerKey(b, passphrase); err != nil {
			return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w", path, err))
		}
		defer clear(der)
	default:
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w: PEM type %q", path, errKeyFormat, b.Type))
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w: not PKCS#8", path, errKeyFormat))
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: a share key is a P-256 key, not %T", path, k))
	}
	out, err := ec.ECDH()
	if err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w", path, err))
	}
	return out, nil
}

// readSharePublicKey reads a share public key file (PKIX PEM, P-256) and
// returns its DER.
func readSharePublicKey(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("read share public key: %w", err))
	}
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != pemPublicKey {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: not a PEM %q block", path, pemPublicKey))
	}
	if _, err := seal.ParsePublicKey(b.Bytes); err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w (a share key is P-256, separate from the signing key)", path, err))
	}
	return b.Bytes, nil
}

// shareKeyFlags select an officer's share key: a file, or a key pair with
// CKA_DERIVE on a PKCS#11 token.
type shareKeyFlags struct {
	file string
	uri  string
}

func (s *shareKeyFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.file, "share-key", "", "share key file (default: the --officer-key file name + "+shareSuffix+")")
	f.StringVar(&s.uri, "share-pkcs11", "", `share key pair (P-256, CKA_DERIVE) on a PKCS#11 token: "pkcs11:token=LABEL;object=KEYLABEL?module-path=/path/lib.so"; its PIN comes from --officer-pin-env`)
}

// load opens the share key. officerKey is the --officer-key file (for the
// default name); pass is the passphrase source shared with it. The caller
// closes the result.
func (s *shareKeyFlags) load(officerKey string, pass passphraseFlags, pinEnv string) (shareKey, error) {
	switch {
	case s.file != "" && s.uri != "":
		return nil, usageErrorf("give --share-key or --share-pkcs11, not both")
	case s.uri != "":
		return openTokenShareKey(s.uri, pinEnv)
	}
	path := s.file
	if path == "" {
		if officerKey == "" {
			return nil, usageErrorf("a share key is required: --share-key FILE or --share-pkcs11 URI")
		}
		path = officerKey + shareSuffix
	}
	p, err := pass.read(false)
	if err != nil {
		return nil, err
	}
	k, err := loadShareKeyFile(path, p)
	clear(p)
	if err != nil {
		return nil, err
	}
	return fileShareKey{k}, nil
}

// shareKey is a share private key the CLI can run ECDH with.
type shareKey interface {
	ecdh.KeyExchanger
	Close() error
}

type fileShareKey struct{ *ecdh.PrivateKey }

func (fileShareKey) Close() error { return nil }
