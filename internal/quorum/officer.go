package quorum

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"

	"github.com/custodyhq/custody/internal/names"
)

// Officer is a security officer: a name and a public signing key
// (Ed25519 or ECDSA P-256) in PKIX DER form.
type Officer struct {
	Name      string `json:"name"`
	PublicKey []byte `json:"public_key"`
}

// NewOfficer returns an Officer for pub, which must be an Ed25519 or ECDSA
// P-256 public key.
func NewOfficer(name string, pub crypto.PublicKey) (Officer, error) {
	if err := checkKey(pub); err != nil {
		return Officer{}, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return Officer{}, fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	o := Officer{Name: name, PublicKey: der}
	return o, o.Validate()
}

// Fingerprint is the lower-case hex SHA-256 of the officer's PKIX public key.
func (o Officer) Fingerprint() string {
	d := sha256.Sum256(o.PublicKey)
	return hex.EncodeToString(d[:])
}

// Validate checks the name and that the key parses as a supported type.
func (o Officer) Validate() error {
	if err := names.ID(o.Name, maxIDLen); err != nil {
		return fmt.Errorf("%w: name: %w", ErrInvalidOfficers, err)
	}
	if _, err := o.publicKey(); err != nil {
		return fmt.Errorf("%w: officer %q: %w", ErrInvalidOfficers, o.Name, err)
	}
	return nil
}

func (o Officer) publicKey() (crypto.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(o.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	if err := checkKey(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		if len(k) == ed25519.PublicKeySize {
			return nil
		}
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return nil
		}
	}
	return fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
}

// OfficerSet is the officers and the number of approvals (Threshold, M)
// a proposal needs.
type OfficerSet struct {
	Officers  []Officer `json:"officers"`
	Threshold int       `json:"threshold"`
}

// Validate checks 1 <= M <= N, M >= 2 unless allowDev, non-empty unique
// names and unique keys.
func (s OfficerSet) Validate(allowDev bool) error {
	n := len(s.Officers)
	switch {
	case s.Threshold < 1:
		return fmt.Errorf("%w: threshold: must be at least 1", ErrInvalidOfficers)
	case s.Threshold < 2 && !allowDev:
		return fmt.Errorf("%w: threshold: must be at least 2 (1 only in development)", ErrInvalidOfficers)
	case s.Threshold > n:
		return fmt.Errorf("%w: threshold: %d exceeds the %d officers", ErrInvalidOfficers, s.Threshold, n)
	}
	names := make(map[string]bool, n)
	keys := make(map[string]bool, n)
	for i, o := range s.Officers {
		if err := o.Validate(); err != nil {
			return fmt.Errorf("officers[%d]: %w", i, err)
		}
		if names[o.Name] {
			return fmt.Errorf("%w: officers[%d].name: duplicate %q", ErrInvalidOfficers, i, o.Name)
		}
		if fp := o.Fingerprint(); keys[fp] {
			return fmt.Errorf("%w: officers[%d].public_key: shared with another officer", ErrInvalidOfficers, i)
		} else {
			keys[fp] = true
		}
		names[o.Name] = true
	}
	return nil
}

// Lookup returns the officer called name.
func (s OfficerSet) Lookup(name string) (Officer, bool) {
	for _, o := range s.Officers {
		if o.Name == name {
			return o, true
		}
	}
	return Officer{}, false
}

func (s OfficerSet) clone() OfficerSet {
	out := OfficerSet{Threshold: s.Threshold, Officers: make([]Officer, len(s.Officers))}
	for i, o := range s.Officers {
		out.Officers[i] = Officer{Name: o.Name, PublicKey: bytes.Clone(o.PublicKey)}
	}
	return out
}

// Signature domains: an approval can never be mistaken for a veto or for a
// signature made for any other purpose with the same key.
const (
	approvalDomain = "custody-approval-v1\n"
	vetoDomain     = "custody-veto-v1\n"
)

// SignApproval signs an approval of the proposal with digest d. The signer
// may be an Ed25519 or ECDSA P-256 key, in memory or on a token (crypto11).
func SignApproval(signer crypto.Signer, d Digest) ([]byte, error) {
	return sign(signer, approvalDomain, d)
}

// SignVeto signs a veto of the proposal with digest d.
func SignVeto(signer crypto.Signer, d Digest) ([]byte, error) {
	return sign(signer, vetoDomain, d)
}

// VerifyApproval checks that sig is o's approval of digest d.
func VerifyApproval(o Officer, d Digest, sig []byte) error {
	return verify(o, approvalDomain, d, sig)
}

// VerifyVeto checks that sig is o's veto of digest d.
func VerifyVeto(o Officer, d Digest, sig []byte) error {
	return verify(o, vetoDomain, d, sig)
}

func message(domain string, d Digest) []byte {
	return append([]byte(domain), d[:]...)
}

func sign(signer crypto.Signer, domain string, d Digest) ([]byte, error) {
	msg := message(domain, d)
	switch pub := signer.Public().(type) {
	case ed25519.PublicKey:
		return signer.Sign(rand.Reader, msg, crypto.Hash(0))
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			break
		}
		h := sha256.Sum256(msg)
		return signer.Sign(rand.Reader, h[:], crypto.SHA256)
	}
	return nil, fmt.Errorf("%w: %T", ErrUnsupportedKey, signer.Public())
}

func verify(o Officer, domain string, d Digest, sig []byte) error {
	pub, err := o.publicKey()
	if err != nil {
		return err
	}
	msg := message(domain, d)
	ok := false
	switch k := pub.(type) {
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		h := sha256.Sum256(msg)
		ok = ecdsa.VerifyASN1(k, h[:], sig)
	}
	if !ok {
		return fmt.Errorf("%w: officer %q", ErrBadSignature, o.Name)
	}
	return nil
}
