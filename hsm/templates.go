package hsm

import (
	"github.com/miekg/pkcs11"
)

// Constants that miekg/pkcs11 v1.1.2 lacks (PKCS#11 v3.0 values).
const (
	ckkECEdwards           = 0x40
	ckmECEdwardsKeyPairGen = 0x1055
	ckmEdDSA               = 0x1057
)

// Kind is the purpose of a key in custody. It fixes the key's type, size and
// the only usages the token will allow it.
type Kind int

// Key kinds. The numbering is stable: it is persisted by callers.
const (
	KindInvalid    Kind = iota
	KindAES256          // master key: AES-GCM encrypt/decrypt, AES-KWP wrap/unwrap
	KindHMACSHA256      // HMAC-SHA256 sign/verify
	KindECDSAP256       // ECDSA P-256 signing
	KindECDSAP384       // ECDSA P-384 signing
	KindEd25519         // Ed25519 signing
	KindRSA3072PSS      // RSA-3072 PSS signing
	KindAuditP256       // the audit log's checkpoint signing key (ECDSA P-256)
)

var kindNames = map[Kind]string{
	KindAES256: "aes-256", KindHMACSHA256: "hmac-sha256", KindECDSAP256: "ecdsa-p256",
	KindECDSAP384: "ecdsa-p384", KindEd25519: "ed25519", KindRSA3072PSS: "rsa-3072-pss",
	KindAuditP256: "audit-ecdsa-p256",
}

func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return "invalid"
}

// Asymmetric reports whether the kind is a key pair.
func (k Kind) Asymmetric() bool {
	switch k {
	case KindECDSAP256, KindECDSAP384, KindEd25519, KindRSA3072PSS, KindAuditP256:
		return true
	}
	return false
}

// DER-encoded curve OIDs for CKA_EC_PARAMS.
var (
	oidP256    = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	oidP384    = []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}
	oidEd25519 = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}
)

// usages lists, for each kind, the usage attributes of the (private or
// secret) key. Every usage attribute is always set explicitly, true or false,
// because SoftHSM's defaults are permissive (a bare AES key may wrap).
type usages struct{ encrypt, decrypt, wrap, unwrap, sign, verify, derive bool }

var kindUsages = map[Kind]usages{
	KindAES256:     {encrypt: true, decrypt: true, wrap: true, unwrap: true},
	KindHMACSHA256: {sign: true, verify: true},
	KindECDSAP256:  {sign: true},
	KindECDSAP384:  {sign: true},
	KindEd25519:    {sign: true},
	KindRSA3072PSS: {sign: true},
	KindAuditP256:  {sign: true},
}

// custodyAttrs are the attributes every key in custody has, with why.
func custodyAttrs(id []byte, label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),        // persistent: lives on the token, not in a session
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),      // only visible after login
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),    // CKA_VALUE / private parts never readable
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), // cannot be wrapped out, ever (false->true is refused)
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),  // no logged-in user may toggle usages afterwards
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),             // random, how custody finds the object again
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),       // unique, human-readable
	}
}

func usageAttrs(u usages) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, u.encrypt),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, u.decrypt),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, u.wrap),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, u.unwrap),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, u.sign),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, u.verify),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, u.derive),
	}
}

func privUsageAttrs(u usages) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, u.decrypt),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, u.unwrap),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, u.sign),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, u.derive),
	}
}

// genSpec is what C_GenerateKey / C_GenerateKeyPair need for one kind.
type genSpec struct {
	mech   uint
	secret []*pkcs11.Attribute // secret key template (symmetric kinds)
	pub    []*pkcs11.Attribute // public key template (pairs)
	priv   []*pkcs11.Attribute // private key template (pairs)
}

// templateFor builds the enforced creation template of a kind for this
// token: the HMAC key type is the one the probe found, and attributes the
// vendor profile says the token refuses are left out (the read-back still
// checks every custody attribute).
func (m *Module) templateFor(kind Kind, id []byte, label string) (genSpec, bool) {
	spec, ok := templateFor(kind, id, label, m.capsNow().hmacKeyType)
	if !ok {
		return spec, false
	}
	spec.secret = m.profile.filter(pkcs11.CKO_SECRET_KEY, spec.secret)
	spec.priv = m.profile.filter(pkcs11.CKO_PRIVATE_KEY, spec.priv)
	spec.pub = m.profile.filter(pkcs11.CKO_PUBLIC_KEY, spec.pub)
	return spec, true
}

// templateFor builds the enforced creation template of a kind. It is the only
// place key templates are written. hmacKeyType is CKK_GENERIC_SECRET or
// CKK_SHA256_HMAC, as the token needs.
func templateFor(kind Kind, id []byte, label string, hmacKeyType uint) (genSpec, bool) {
	u, ok := kindUsages[kind]
	if !ok {
		return genSpec{}, false
	}
	common := append(custodyAttrs(id, label), usageAttrs(u)...)
	// A private key object has no CKA_ENCRYPT, CKA_VERIFY or CKA_WRAP (they
	// belong to its public half); its usages are sign, decrypt, unwrap, derive.
	privUsage := append(custodyAttrs(id, label), privUsageAttrs(u)...)
	pubCommon := func(extra ...*pkcs11.Attribute) []*pkcs11.Attribute {
		return append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),       // persistent beside its private key
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),    // public keys are public
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false), // cannot be repurposed
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),      // only verification
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}, extra...)
	}
	privClass := func(keyType uint) []*pkcs11.Attribute {
		return append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		}, privUsage...)
	}
	switch kind {
	case KindAES256:
		return genSpec{mech: pkcs11.CKM_AES_KEY_GEN, secret: append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), // AES-256
		}, common...)}, true
	case KindHMACSHA256:
		if hmacKeyType == 0 {
			hmacKeyType = pkcs11.CKK_GENERIC_SECRET
		}
		return genSpec{mech: pkcs11.CKM_GENERIC_SECRET_KEY_GEN, secret: append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, hmacKeyType),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), // 256-bit HMAC key (RFC 2104: >= hash length)
		}, common...)}, true
	case KindECDSAP256, KindAuditP256:
		return genSpec{mech: pkcs11.CKM_EC_KEY_PAIR_GEN,
			pub:  pubCommon(pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidP256)),
			priv: privClass(pkcs11.CKK_EC)}, true
	case KindECDSAP384:
		return genSpec{mech: pkcs11.CKM_EC_KEY_PAIR_GEN,
			pub:  pubCommon(pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidP384)),
			priv: privClass(pkcs11.CKK_EC)}, true
	case KindEd25519:
		return genSpec{mech: ckmECEdwardsKeyPairGen,
			pub:  pubCommon(pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidEd25519)),
			priv: privClass(ckkECEdwards)}, true
	case KindRSA3072PSS:
		return genSpec{mech: pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN,
			pub: pubCommon(pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
				pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 3072),
				pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{0x01, 0x00, 0x01})),
			priv: privClass(pkcs11.CKK_RSA)}, true
	}
	return genSpec{}, false
}

func (m *Module) dataKeyTemplate(sensitive bool) []*pkcs11.Attribute {
	return m.profile.filter(pkcs11.CKO_SECRET_KEY, dataKeyTemplate(sensitive))
}

func (m *Module) unwrapTemplate(sensitive bool) []*pkcs11.Attribute {
	return m.profile.filter(pkcs11.CKO_SECRET_KEY, unwrapTemplate(sensitive))
}

// dataKeyTemplate is the template of a transient AES-256 data key: a session
// object (gone with the session), extractable so it can be wrapped under a
// master key or to a recipient, and sensitive unless the caller asked for the
// plaintext. It never becomes a token object.
func dataKeyTemplate(sensitive bool) []*pkcs11.Attribute {
	return append(unwrapTemplate(sensitive), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, DataKeySize))
}

// unwrapTemplate is dataKeyTemplate without CKA_VALUE_LEN, which C_UnwrapKey
// derives from the wrapped value and refuses to be told.
func unwrapTemplate(sensitive bool) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),  // session object: destroyed with the session at the latest
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), // invisible to other logins
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, sensitive),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), // must be wrappable (under master or to recipient)
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),    // the HSM never uses a data key itself
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		// Last: SoftHSM applies a template in order, and after MODIFIABLE=false
		// C_UnwrapKey refuses the remaining attributes as read-only.
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	}
}

// recipientTemplate imports a recipient's RSA public key as a session object
// that can only wrap.
func recipientTemplate(modulus, exponent []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, modulus),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, exponent),
	}
}
