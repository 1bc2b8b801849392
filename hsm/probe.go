package hsm

import (
	"fmt"
	"slices"

	"github.com/miekg/pkcs11"
)

// mechanism names custody uses, for the start-up probe.
var wantedMechs = []struct {
	mech uint
	name string
}{
	{pkcs11.CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN"},
	{pkcs11.CKM_AES_GCM, "CKM_AES_GCM"},
	{pkcs11.CKM_GENERIC_SECRET_KEY_GEN, "CKM_GENERIC_SECRET_KEY_GEN"},
	{pkcs11.CKM_SHA256_HMAC, "CKM_SHA256_HMAC"},
	{pkcs11.CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"},
	{pkcs11.CKM_ECDSA, "CKM_ECDSA"},
	{ckmECEdwardsKeyPairGen, "CKM_EC_EDWARDS_KEY_PAIR_GEN"},
	{ckmEdDSA, "CKM_EDDSA"},
	{pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN"},
	{pkcs11.CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS"},
	{pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP"},
}

// mechName names a mechanism custody uses.
func mechName(mech uint) string {
	for _, w := range wantedMechs {
		if w.mech == mech {
			return w.name
		}
	}
	return fmt.Sprintf("mechanism 0x%X", mech)
}

// kindMech is the generation mechanism a kind needs.
func kindMech(k Kind) uint {
	switch k {
	case KindAES256:
		return pkcs11.CKM_AES_KEY_GEN
	case KindHMACSHA256:
		return pkcs11.CKM_GENERIC_SECRET_KEY_GEN
	case KindECDSAP256, KindECDSAP384, KindAuditP256:
		return pkcs11.CKM_EC_KEY_PAIR_GEN
	case KindEd25519:
		return ckmECEdwardsKeyPairGen
	case KindRSA3072PSS:
		return pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN
	}
	return 0
}

// probeLocked reads the token's mechanism list. Caller holds mu for writing.
func (m *Module) probeLocked() {
	mechs := map[uint]bool{}
	m.missing = nil
	defer m.mechs.Store(&mechs)
	list, err := m.p.GetMechanismList(m.slot)
	if err != nil {
		return
	}
	for _, mech := range list {
		if !slices.Contains(m.deny, mech.Mechanism) {
			mechs[mech.Mechanism] = true
		}
	}
	for _, w := range wantedMechs {
		if !mechs[w.mech] {
			m.missing = append(m.missing, w.name)
		}
	}
}

// Has reports whether the token offers a mechanism (per the start-up probe).
func (m *Module) has(mech uint) bool {
	if p := m.mechs.Load(); p != nil {
		return (*p)[mech]
	}
	return false
}
