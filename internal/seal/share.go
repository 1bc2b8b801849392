package seal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"

	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/secmem"
)

// Envelope is one officer's share as custodyd stores and serves it:
// encrypted to the officer's share key, with its commitment. It holds
// nothing secret.
type Envelope struct {
	// Index is the share's Shamir x coordinate, 1..N.
	Index int `json:"index"`
	// Officer is the holder's name; OfficerKey the PKIX DER of the
	// signing key that must sign their submissions.
	Officer    string `json:"officer"`
	OfficerKey []byte `json:"officer_key"`
	// ShareKey is the PKIX DER of the holder's HPKE (P-256) public key.
	ShareKey []byte `json:"share_key"`
	// Sealed is the HPKE encapsulated key followed by the ciphertext.
	Sealed []byte `json:"sealed"`
	// Commitment is SHA-256 over domain, vault id, epoch, index, share.
	Commitment []byte `json:"commitment"`
}

// OfficerFingerprint is the fingerprint of the holder's signing key.
func (e Envelope) OfficerFingerprint() string { return Fingerprint(e.OfficerKey) }

// ShareKeyFingerprint is the fingerprint of the holder's share key.
func (e Envelope) ShareKeyFingerprint() string { return Fingerprint(e.ShareKey) }

func shareInfo(ref VaultRef, index int) []byte {
	return binding(purposeShare, ref.parts(index)...)
}

// Commitment commits to share i of the PIN named by ref: SHA-256 over the
// share followed by the binding of the domain, vault id, epoch and index,
// zero-padded to whole SHA-256 blocks.
func Commitment(ref VaultRef, index int, share []byte) []byte {
	return secretDigest(share, binding(domainCommit, ref.parts(index)...))
}

// RekeyProof is what a new holder sends to prove their share decrypted:
// a hash of the share under a domain of its own (not the commitment, which
// anyone can copy from the envelope).
func RekeyProof(ref VaultRef, index int, share []byte) []byte {
	return secretDigest(share, binding(domainProof, ref.parts(index)...))
}

// secretDigest hashes secret || public, zero-padded to a multiple of the
// SHA-256 block size, in a buffer it zeroes afterwards. The layout keeps
// the secret out of the hash's own buffer: SHA-256 copies only a trailing
// partial block into its state, and there is none.
func secretDigest(secret, public []byte) []byte {
	n := (len(secret) + len(public) + sha256.BlockSize - 1) / sha256.BlockSize * sha256.BlockSize
	buf := make([]byte, n)
	copy(buf, secret)
	copy(buf[len(secret):], public)
	d := sha256.Sum256(buf)
	clear(buf)
	return d[:]
}

// Holder is an officer who receives a share.
type Holder struct {
	Officer    string
	OfficerKey []byte // PKIX DER signing key
	ShareKey   []byte // PKIX DER P-256 HPKE key
}

// maxCheckedSubsets bounds how many M-subsets Split recombines to check.
const maxCheckedSubsets = 4096

// Split splits pin threshold-of-len(holders), encrypts share i to holder i
// (in order, index i+1) and returns the envelopes and each share's rekey
// proof. Before returning it recombines every threshold-subset of shares
// (or, for very large N, the first, last and a spread of them) and checks
// each gives pin, so a split that would not unseal is never used. The
// shares themselves are zeroed before Split returns.
func Split(ref VaultRef, pin []byte, threshold int, holders []Holder) ([]Envelope, [][]byte, error) {
	n := len(holders)
	if threshold < 2 || threshold > n || n > 255 {
		return nil, nil, fmt.Errorf("%w: %d of %d", ErrThreshold, threshold, n)
	}
	if len(ref.VaultID) != vaultIDSize || ref.Epoch == 0 {
		return nil, nil, fmt.Errorf("%w: vault reference", ErrFormat)
	}
	seen := map[string]bool{}
	for i, h := range holders {
		if h.Officer == "" || len(h.OfficerKey) == 0 {
			return nil, nil, fmt.Errorf("%w: holders[%d]: officer and signing key required", ErrThreshold, i)
		}
		if _, err := ParsePublicKey(h.ShareKey); err != nil {
			return nil, nil, fmt.Errorf("holders[%d] (%s) share key: %w", i, h.Officer, err)
		}
		fp := Fingerprint(h.ShareKey)
		if seen[fp] {
			return nil, nil, fmt.Errorf("%w: holders[%d] (%s): share key shared with another officer", ErrThreshold, i, h.Officer)
		}
		seen[fp] = true
	}
	shares, err := quorum.Split(pin, n, threshold)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		for _, s := range shares {
			clear(s)
		}
	}()
	if err := checkRecombine(shares, threshold, pin); err != nil {
		return nil, nil, err
	}
	envs := make([]Envelope, n)
	proofs := make([][]byte, n)
	for i, h := range holders {
		idx := int(shares[i][0])
		sealed, err := sealTo(h.ShareKey, shareInfo(ref, idx), shares[i])
		if err != nil {
			return nil, nil, fmt.Errorf("encrypt share for %s: %w", h.Officer, err)
		}
		envs[i] = Envelope{Index: idx, Officer: h.Officer, OfficerKey: bytes.Clone(h.OfficerKey), ShareKey: bytes.Clone(h.ShareKey),
			Sealed: sealed, Commitment: Commitment(ref, idx, shares[i])}
		proofs[i] = RekeyProof(ref, idx, shares[i])
	}
	return envs, proofs, nil
}

// checkRecombine combines threshold-subsets of shares and compares each
// result with pin.
func checkRecombine(shares []quorum.Share, m int, pin []byte) error {
	n := len(shares)
	idx := make([]int, m)
	for i := range idx {
		idx[i] = i
	}
	subset := make([]quorum.Share, m)
	checked := 0
	for {
		for i, j := range idx {
			subset[i] = shares[j]
		}
		got, err := quorum.Combine(subset)
		if err != nil {
			return err
		}
		ok := subtle.ConstantTimeCompare(got, pin) == 1
		clear(got)
		if !ok {
			return fmt.Errorf("%w: shares do not recombine to the PIN", ErrThreshold)
		}
		checked++
		if checked >= maxCheckedSubsets {
			// Also the last subset, then stop.
			for i := range subset {
				subset[i] = shares[n-m+i]
			}
			got, err := quorum.Combine(subset)
			if err != nil {
				return err
			}
			ok := subtle.ConstantTimeCompare(got, pin) == 1
			clear(got)
			if !ok {
				return fmt.Errorf("%w: shares do not recombine to the PIN", ErrThreshold)
			}
			return nil
		}
		// Next combination in lexicographic order.
		i := m - 1
		for i >= 0 && idx[i] == n-m+i {
			i--
		}
		if i < 0 {
			return nil
		}
		idx[i]++
		for j := i + 1; j < m; j++ {
			idx[j] = idx[j-1] + 1
		}
	}
}

// OpenShare decrypts the officer's envelope with their share key (kx: a
// P-256 private key in memory, or on their token through PKCS#11
// C_DeriveKey) and checks it against its commitment. The share is
// returned in locked memory; the caller destroys it.
func OpenShare(kx ecdh.KeyExchanger, ref VaultRef, env Envelope) (*secmem.Buffer, error) {
	if kx.Curve() != ecdh.P256() {
		return nil, fmt.Errorf("%w: share key must be P-256", ErrFormat)
	}
	mine, err := MarshalPublicKey(kx.PublicKey())
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(mine, env.ShareKey) {
		return nil, fmt.Errorf("%w: share %d of %s is encrypted to share key %s, not to this one (%s)", ErrWrongTarget,
			env.Index, env.Officer, Fingerprint(env.ShareKey)[:16], Fingerprint(mine)[:16])
	}
	pt, err := openWith(kx, shareInfo(ref, env.Index), env.Sealed)
	if err != nil {
		return nil, fmt.Errorf("%w: share %d: %v", ErrBadShare, env.Index, err)
	}
	share, err := secmem.From(pt)
	if err != nil {
		return nil, err
	}
	if err := checkShare(ref, env.Index, share.Bytes(), env.Commitment); err != nil {
		share.Destroy()
		return nil, err
	}
	return share, nil
}

// checkShare verifies a share's x coordinate and commitment.
func checkShare(ref VaultRef, index int, share, commitment []byte) error {
	if len(share) < 2 || int(share[0]) != index {
		return fmt.Errorf("%w: share %d is malformed", ErrBadShare, index)
	}
	if subtle.ConstantTimeCompare(Commitment(ref, index, share), commitment) != 1 || len(commitment) != sha256.Size {
		return fmt.Errorf("%w: share %d does not match its commitment", ErrBadShare, index)
	}
	return nil
}
