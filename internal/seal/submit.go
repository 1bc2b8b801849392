package seal

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"fmt"

	"github.com/custodyhq/custody/internal/secmem"
)

// EphemeralKey is the key pair a sealed custodyd makes at start. Shares
// (and, at the ceremony, the installer's PIN) are encrypted to it, so they
// are never in the clear inside the TLS stream, in a proxy or in a log.
// It lives only in the memory of the process that made it: after a restart
// every earlier submission is useless.
type EphemeralKey struct {
	priv *ecdh.PrivateKey
	der  []byte
	fp   string
}

// NewEphemeralKey makes a fresh P-256 key pair.
func NewEphemeralKey() (*EphemeralKey, error) {
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := MarshalPublicKey(priv.PublicKey())
	if err != nil {
		return nil, err
	}
	return &EphemeralKey{priv: priv, der: der, fp: Fingerprint(der)}, nil
}

// PublicKey is the PKIX DER of the public half.
func (k *EphemeralKey) PublicKey() []byte { return bytes.Clone(k.der) }

// Fingerprint is the hex SHA-256 of PublicKey, which custodyd prints at
// start so officers can compare it before they send a share.
func (k *EphemeralKey) Fingerprint() string { return k.fp }

func pinInfo(ephFP string) []byte { return binding(purposePIN, []byte(ephFP)) }

// SealPIN encrypts the installer's PIN to a sealed custodyd's ephemeral
// key (PKIX DER), for the key ceremony.
func SealPIN(ephemeralKey, pin []byte) ([]byte, error) {
	return sealTo(ephemeralKey, pinInfo(Fingerprint(ephemeralKey)), pin)
}

// OpenPIN decrypts a PIN sealed with SealPIN into locked memory.
func (k *EphemeralKey) OpenPIN(sealed []byte) (*secmem.Buffer, error) {
	pt, err := openWith(k.priv, pinInfo(k.fp), sealed)
	if err != nil {
		return nil, fmt.Errorf("%w: the PIN was not encrypted to this custodyd's unseal key (%v)", ErrWrongTarget, err)
	}
	return secmem.From(pt)
}

// Target is what an officer needs, from the sealed custodyd, to submit
// their share: which share (vault, epoch, index), the ephemeral key to
// encrypt to, and a one-time nonce.
type Target struct {
	Ref          VaultRef
	Index        int
	EphemeralKey []byte // PKIX DER
	Nonce        []byte
}

// Submission is one officer's share on its way to custodyd.
type Submission struct {
	Ref                  VaultRef
	Index                int
	OfficerFingerprint   string
	EphemeralFingerprint string
	Nonce                []byte
	Sealed               []byte
	Signature            []byte
}

func submitInfo(ref VaultRef, index int, ephFP string, nonce []byte) []byte {
	return binding(purposeSubmit, append(ref.parts(index), []byte(ephFP), nonce)...)
}

func (s *Submission) digest() []byte {
	return digest(binding(domainSubmit, append(s.Ref.parts(s.Index),
		[]byte(s.OfficerFingerprint), []byte(s.EphemeralFingerprint), s.Nonce, s.Sealed)...))
}

// Submit encrypts share to the target's ephemeral key and signs the
// submission with the officer's signing key (in memory or on a token).
func Submit(signer crypto.Signer, share []byte, tgt Target) (*Submission, error) {
	if len(tgt.Nonce) != nonceSize {
		return nil, fmt.Errorf("%w: nonce", ErrFormat)
	}
	officerKey, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: signing key: %v", ErrFormat, err)
	}
	ephFP := Fingerprint(tgt.EphemeralKey)
	sealed, err := sealTo(tgt.EphemeralKey, submitInfo(tgt.Ref, tgt.Index, ephFP, tgt.Nonce), share)
	if err != nil {
		return nil, err
	}
	s := &Submission{Ref: tgt.Ref, Index: tgt.Index, OfficerFingerprint: Fingerprint(officerKey),
		EphemeralFingerprint: ephFP, Nonce: bytes.Clone(tgt.Nonce), Sealed: sealed}
	if s.Signature, err = sign(signer, domainSubmit, s.digest()); err != nil {
		return nil, err
	}
	return s, nil
}

// Confirmation is a new holder's signed proof, during a rekey, that their
// new share decrypted and matched its commitment.
type Confirmation struct {
	Ref                VaultRef
	Index              int
	OfficerFingerprint string
	Proof              []byte
	Signature          []byte
}

func (c *Confirmation) digest() []byte {
	return digest(binding(domainConfirm, append(c.Ref.parts(c.Index), []byte(c.OfficerFingerprint), c.Proof)...))
}

// Confirm makes the confirmation for a share opened with OpenShare.
func Confirm(signer crypto.Signer, ref VaultRef, index int, share []byte) (*Confirmation, error) {
	officerKey, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: signing key: %v", ErrFormat, err)
	}
	c := &Confirmation{Ref: ref, Index: index, OfficerFingerprint: Fingerprint(officerKey), Proof: RekeyProof(ref, index, share)}
	if c.Signature, err = sign(signer, domainConfirm, c.digest()); err != nil {
		return nil, err
	}
	return c, nil
}

// VerifyConfirmation checks c against the holder's envelope and the proof
// recorded when the shares were made.
func VerifyConfirmation(c *Confirmation, ref VaultRef, env Envelope, wantProof []byte) error {
	switch {
	case !bytes.Equal(c.Ref.VaultID, ref.VaultID) || c.Ref.Epoch != ref.Epoch || c.Index != env.Index:
		return ErrWrongTarget
	case c.OfficerFingerprint != env.OfficerFingerprint() || !verify(env.OfficerKey, domainConfirm, c.digest(), c.Signature):
		return fmt.Errorf("%w: confirmation for share %d", ErrNotOfficer, c.Index)
	case !bytes.Equal(c.Proof, wantProof):
		return fmt.Errorf("%w: share %d: the proof does not match (the share did not decrypt to what was sent)", ErrBadShare, c.Index)
	}
	return nil
}
