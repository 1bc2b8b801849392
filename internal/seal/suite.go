package seal

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// Suite names the HPKE ciphersuite every seal encryption uses.
const Suite = "HPKE base mode: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"

func kdf() hpke.KDF   { return hpke.HKDFSHA256() }
func aead() hpke.AEAD { return hpke.AES256GCM() }

// Purposes and signature domains. Each binds what it protects to one use:
// a share sealed to an officer cannot be replayed as a submission, a
// submission signature cannot be an approval, and so on.
const (
	purposeShare   = "custody-seal-share-v1"
	purposeSubmit  = "custody-seal-submit-v1"
	purposePIN     = "custody-seal-ceremony-pin-v1"
	domainCommit   = "custody-seal-commitment-v1"
	domainProof    = "custody-seal-rekey-proof-v1"
	domainSubmit   = "custody-seal-unseal-v1"
	domainConfirm  = "custody-seal-rekey-confirm-v1"
	vaultIDSize    = 16
	nonceSize      = 32
	maxSealedBytes = 4096
)

// binding is an unambiguous encoding of a purpose and its parts: the
// purpose, a zero byte, then each part with a 4-byte big-endian length.
func binding(purpose string, parts ...[]byte) []byte {
	n := len(purpose) + 1
	for _, p := range parts {
		n += 4 + len(p)
	}
	b := make([]byte, 0, n)
	b = append(b, purpose...)
	b = append(b, 0)
	for _, p := range parts {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// VaultRef names one PIN of one vault: the vault id (random, fixed at the
// ceremony) and the epoch (1 at the ceremony, +1 at each rekey).
type VaultRef struct {
	VaultID []byte
	Epoch   uint64
}

func (r VaultRef) parts(index int) [][]byte {
	return [][]byte{r.VaultID, u64(r.Epoch), u64(uint64(index))}
}

// NewVaultID returns a fresh random vault id.
func NewVaultID() ([]byte, error) {
	id := make([]byte, vaultIDSize)
	_, err := rand.Read(id)
	return id, err
}

// ParsePublicKey parses a share or unseal public key: the PKIX DER of a
// P-256 key.
func ParsePublicKey(der []byte) (*ecdh.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %v", ErrFormat, err)
	}
	var out *ecdh.PublicKey
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: public key: want P-256, got %s", ErrFormat, k.Curve.Params().Name)
		}
		out, err = k.ECDH()
	case *ecdh.PublicKey:
		if k.Curve() != ecdh.P256() {
			return nil, fmt.Errorf("%w: public key: want P-256", ErrFormat)
		}
		out = k
	default:
		return nil, fmt.Errorf("%w: public key: want P-256, got %T", ErrFormat, pub)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %v", ErrFormat, err)
	}
	return out, nil
}

// MarshalPublicKey returns the PKIX DER of a P-256 key.
func MarshalPublicKey(pub *ecdh.PublicKey) ([]byte, error) {
	if pub.Curve() != ecdh.P256() {
		return nil, fmt.Errorf("%w: public key: want P-256", ErrFormat)
	}
	return x509.MarshalPKIXPublicKey(pub)
}

// Fingerprint is the lower-case hex SHA-256 of a PKIX DER public key, as
// officers' signing keys are fingerprinted.
func Fingerprint(der []byte) string {
	d := sha256.Sum256(der)
	return hex.EncodeToString(d[:])
}

// FormatFingerprint groups a hex fingerprint in fours for reading aloud.
func FormatFingerprint(fp string) string {
	var b strings.Builder
	for i := 0; i < len(fp); i += 4 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(fp[i:min(i+4, len(fp))])
	}
	return b.String()
}

// sealTo encrypts plaintext to pub (PKIX DER) with info; the result is the
// encapsulated key followed by the ciphertext.
func sealTo(pubDER, info, plaintext []byte) ([]byte, error) {
	pub, err := ParsePublicKey(pubDER)
	if err != nil {
		return nil, err
	}
	hpub, err := hpke.NewDHKEMPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	return hpke.Seal(hpub, kdf(), aead(), info, plaintext)
}

// openWith decrypts sealed with kx (a P-256 private key in memory or on a
// token). The plaintext is on the Go heap: callers move it into a
// secmem.Buffer at once.
func openWith(kx ecdh.KeyExchanger, info, sealed []byte) ([]byte, error) {
	if len(sealed) > maxSealedBytes {
		return nil, fmt.Errorf("%w: sealed value too large", ErrFormat)
	}
	priv, err := hpke.NewDHKEMPrivateKey(kx)
	if err != nil {
		return nil, fmt.Errorf("%w: private key: %v", ErrFormat, err)
	}
	return hpke.Open(priv, kdf(), aead(), info, sealed)
}

// sign signs domain||"\n"||digest the way officers sign approvals: Ed25519
// over the message, ECDSA P-256 over its SHA-256.
func sign(signer crypto.Signer, domain string, digest []byte) ([]byte, error) {
	msg := append([]byte(domain+"\n"), digest...)
	switch pub := signer.Public().(type) {
	case ed25519.PublicKey:
		return signer.Sign(rand.Reader, msg, crypto.Hash(0))
	case *ecdsa.PublicKey:
		if pub.Curve == elliptic.P256() {
			h := sha256.Sum256(msg)
			return signer.Sign(rand.Reader, h[:], crypto.SHA256)
		}
	}
	return nil, fmt.Errorf("%w: signing key %T is not Ed25519 or ECDSA P-256", ErrFormat, signer.Public())
}

// verify checks sig by the officer key (PKIX DER) over domain||"\n"||digest.
func verify(officerKey []byte, domain string, digest, sig []byte) bool {
	pub, err := x509.ParsePKIXPublicKey(officerKey)
	if err != nil {
		return false
	}
	msg := append([]byte(domain+"\n"), digest...)
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		h := sha256.Sum256(msg)
		return k.Curve == elliptic.P256() && ecdsa.VerifyASN1(k, h[:], sig)
	}
	return false
}

func digest(b []byte) []byte {
	d := sha256.Sum256(b)
	return d[:]
}
