package quorum

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
)

// KindRekeySeal replaces the HSM user PIN of a sealed vault.
const KindRekeySeal Kind = "rekey-seal"

// RekeySeal replaces the HSM user PIN with a fresh random one, split
// M-of-N among the current officers (M the current threshold), each share
// encrypted to that officer's share key (internal/seal). The old PIN stays
// in force until every new holder has proved, with a signed confirmation,
// that their share decrypts; only then is it retired (C_SetPIN). After the
// next restart only the new shares unseal.
//
// ShareKeys gives the share public key of an officer who has no share in
// the current split (one added since) or who replaces theirs; everyone
// else keeps the key their current share is encrypted to. An officer
// removed since the last split gets no share.
type RekeySeal struct {
	ShareKeys []OfficerShareKey `json:"share_keys,omitempty"`
	Reason    string            `json:"reason,omitempty"`
}

// OfficerShareKey is an officer's HPKE share key: the PKIX DER of a P-256
// public key, separate from their signing key.
type OfficerShareKey struct {
	Officer   string `json:"officer"`
	PublicKey []byte `json:"public_key"`
}

// Kind implements Payload.
func (RekeySeal) Kind() Kind { return KindRekeySeal }

// Validate implements Payload.
func (p RekeySeal) Validate() error {
	seen := map[string]bool{}
	for i, k := range p.ShareKeys {
		switch {
		case k.Officer == "":
			return invalid("rekey-seal.share_keys[%d].officer: empty", i)
		case seen[k.Officer]:
			return invalid("rekey-seal.share_keys[%d].officer: %q given twice", i, k.Officer)
		case !isP256(k.PublicKey):
			return invalid("rekey-seal.share_keys[%d].public_key: not the PKIX DER of a P-256 key", i)
		}
		seen[k.Officer] = true
	}
	if len(p.Reason) > 256 {
		return invalid("rekey-seal.reason: longer than 256 bytes")
	}
	return nil
}

func isP256(der []byte) bool {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return false
	}
	k, ok := pub.(*ecdsa.PublicKey)
	return ok && k.Curve == elliptic.P256()
}
