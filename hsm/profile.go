package hsm

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/custodyhq/custody/internal/custody"
	"github.com/miekg/pkcs11"
)

// Mechanism numbers that miekg/pkcs11 v1.1.2 lacks or that vendors define.
const (
	// ckmAESKeyWrapKWP is PKCS#11 v3.0's number for RFC 5649 (AES key wrap
	// with padding). SoftHSM 2.6 implements RFC 5649 under 0x210A instead.
	ckmAESKeyWrapKWP = 0x0000210B
	// ckmCloudHSMAESKeyWrapZeroPad is AWS CloudHSM's RFC 5649 mechanism
	// (CKM_VENDOR_DEFINED | 0x216F, cloudhsm_pkcs11_vendor_defs.h).
	ckmCloudHSMAESKeyWrapZeroPad = pkcs11.CKM_VENDOR_DEFINED | 0x216F
	// ckmLunaAESKWP is Thales Luna's CKM_AES_KWP (CKM_VENDOR_DEFINED + 0x171).
	ckmLunaAESKWP = pkcs11.CKM_VENDOR_DEFINED + 0x171
)

// Attr names a custody attribute that the read-back after key creation
// checks. The names are stable: they are recorded in key metadata.
type Attr string

// Custody attributes.
const (
	AttrToken            Attr = "token"             // CKA_TOKEN
	AttrPrivate          Attr = "private"           // CKA_PRIVATE
	AttrSensitive        Attr = "sensitive"         // CKA_SENSITIVE
	AttrExtractable      Attr = "extractable"       // CKA_EXTRACTABLE
	AttrModifiable       Attr = "modifiable"        // CKA_MODIFIABLE
	AttrNeverExtractable Attr = "never_extractable" // CKA_NEVER_EXTRACTABLE
	AttrAlwaysSensitive  Attr = "always_sensitive"  // CKA_ALWAYS_SENSITIVE
	AttrLocal            Attr = "local"             // CKA_LOCAL
	// AttrExtractEnforced is not a PKCS#11 attribute: it says whether the
	// token itself refuses to wrap out a key whose CKA_EXTRACTABLE is false.
	// The start-up probe measures it on a scratch key.
	AttrExtractEnforced Attr = "extractable_enforced"
)

// mandatory are the attributes no profile may waive (every one the custody
// rule does not list as waivable): a key that does not read back with them
// is never recorded, whatever the vendor.
var mandatory = func() map[Attr]bool {
	m := map[Attr]bool{}
	for _, a := range []Attr{AttrToken, AttrPrivate, AttrSensitive, AttrExtractable, AttrModifiable,
		AttrNeverExtractable, AttrAlwaysSensitive, AttrLocal} {
		if !slices.Contains(custody.Waivable, string(a)) {
			m[a] = true
		}
	}
	return m
}()

// Waiver is a custody attribute a vendor cannot set or does not report as
// asked, and why.
type Waiver struct {
	Attr Attr
	Why  string
}

// Profile is what Custody cannot safely probe about a vendor's PKCS#11
// module: attributes it refuses or misreports, mechanisms under vendor
// numbers, session caps, input limits, PIN format. Everything that can be
// probed (key wrap mechanism, GCM IV handling, OAEP hash, HMAC key type,
// bad-tag codes) is probed at start instead; see Capabilities.
type Profile struct {
	// Name is the config value (hsm.profile).
	Name string
	// Vendor is the product, for messages and status.
	Vendor string
	// Omit lists, per object class (CKO_*), the attributes (CKA_*) this
	// vendor refuses in a creation template. They are left to the vendor's
	// fixed values, and the read-back still checks the custody ones.
	Omit map[uint][]uint
	// Waivers are custody attributes the read-back records as unverified
	// instead of refusing the key. Never one of the mandatory attributes.
	Waivers []Waiver
	// WrapCandidates are vendor mechanisms tried, before the standard
	// numbers, as RFC 5649 key wrap. The probe keeps the first whose output
	// equals an RFC 5649 computation in Go.
	WrapCandidates []Mech
	// DeclaredWrap is used only when the probe cannot check any candidate
	// (the token refuses keys the probe could read): a mechanism the
	// vendor documents as RFC 5649. It is reported as unverified. 0: none.
	DeclaredWrap uint
	// AmbiguousErrors are return codes this module uses both for a caller's
	// bad input (a refused recipient key, a bad tag) and for real faults.
	// A failure with one of them is called the caller's fault only after the
	// session, the key and the token are shown to still work.
	AmbiguousErrors []uint
	// LeaksSessionObjects: the module keeps memory for every session object
	// ever destroyed (SoftHSM 2.6.1, upstream issues #562 and #563), so
	// paths that create and destroy session objects grow the process until
	// the module is recycled.
	LeaksSessionObjects bool
	// MaxSessions caps the session pool where the token's own
	// ulMaxSessionCount cannot be trusted. 0: trust the token.
	MaxSessions int
	// MaxGCMInput bounds one AES-GCM plaintext or ciphertext, where the
	// vendor documents a limit lower than Custody's own. 0: no extra bound.
	MaxGCMInput int
	// PINFormat describes the user PIN the module expects.
	PINFormat string
	// CheckPIN, if set, refuses a PIN that cannot be right before it is
	// tried: a wrong login counts towards the token's lockout. It reads
	// the PIN in place (it aliases locked memory) and must not copy it:
	// no string(pin), which puts a copy on the Go heap or stack.
	CheckPIN func(pin []byte) error
	// FileTokenDir: the token lives in a directory that SoftHSM keeps
	// serving from cache after it is removed; liveness checks look at the
	// directory itself.
	FileTokenDir bool
	// NoDataObjects: the module refuses private token data objects
	// (CKO_DATA with CKA_TOKEN or CKA_PRIVATE true), so nothing custodyd
	// keeps on the token besides keys (the instance lease, the audit
	// high-water mark) can live there. Calls that need them fail with
	// ErrUnsupported.
	NoDataObjects bool
	// TestedHere says whether this repository's tests run this module.
	TestedHere bool
}

// Mech is a mechanism number with its name.
type Mech struct {
	Code uint   `json:"code"`
	Name string `json:"name,omitempty"`
}

func (m Mech) String() string {
	if m.Name == "" {
		return fmt.Sprintf("0x%X", m.Code)
	}
	return fmt.Sprintf("%s (0x%X)", m.Name, m.Code)
}

// Waived reports whether the profile waives a, and why.
func (p *Profile) Waived(a Attr) (Waiver, bool) {
	for _, w := range p.Waivers {
		if w.Attr == a {
			return w, true
		}
	}
	return Waiver{}, false
}

// filter drops the attributes the profile omits for class from tmpl.
func (p *Profile) filter(class uint, tmpl []*pkcs11.Attribute) []*pkcs11.Attribute {
	omit := p.Omit[class]
	if len(omit) == 0 {
		return tmpl
	}
	out := tmpl[:0:0]
	for _, a := range tmpl {
		if !slices.Contains(omit, a.Type) {
			out = append(out, a)
		}
	}
	return out
}

func (p *Profile) ambiguous(code uint) bool {
	for _, c := range p.AmbiguousErrors {
		if c == code {
			return true
		}
	}
	return false
}

// validate refuses a profile that would waive what custody rests on.
func (p *Profile) validate() error {
	for _, w := range p.Waivers {
		if mandatory[w.Attr] {
			return fmt.Errorf("%w: profile %s waives %s, which custody never waives", ErrInvalidInput, p.Name, w.Attr)
		}
	}
	return nil
}

var errPINFormat = errors.New("pin format")

// isHex reports whether b is all hex digits, reading it in place.
func isHex(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// checkPIN refuses a PIN the profile says cannot be right, without trying
// it (a wrong login counts towards the token's lockout). The PIN is never
// part of the message.
func (p *Profile) checkPIN(pin []byte) error {
	if p.CheckPIN == nil {
		return nil
	}
	if err := p.CheckPIN(pin); err != nil {
		return fmt.Errorf("%w: the PIN does not have the form the %s profile expects (%s); not tried: %w", ErrLogin, p.Name, p.PINFormat, err)
	}
	return nil
}

// Profiles are the built-in vendor profiles by name. Sources for each fact
// are in docs/hsm-compatibility.md.
var Profiles = map[string]*Profile{
	"softhsm": {
		Name: "softhsm", Vendor: "SoftHSMv2 2.6",
		// SoftHSM reports a bad GCM tag, a bad wrapped key and a refused
		// OAEP recipient as CKR_GENERAL_ERROR (measured).
		AmbiguousErrors:     []uint{pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_FUNCTION_FAILED},
		LeaksSessionObjects: true,
		PINFormat:           "any string of 4-255 bytes",
		FileTokenDir:        true,
		TestedHere:          true,
	},
	"nss": {
		Name: "nss", Vendor: "NSS softokn 3.87",
		Waivers: []Waiver{
			{Attr: AttrLocal, Why: "NSS softokn reports CKA_LOCAL=false for keys it generated (measured on 3.87)"},
		},
		DeclaredWrap: ckmAESKeyWrapKWP,
		PINFormat:    "the NSS database password",
		// sftk_handleDataObject refuses token, private or modifiable data
		// objects with CKR_ATTRIBUTE_VALUE_INVALID (measured on 3.87).
		NoDataObjects: true,
		TestedHere:    true,
	},
	"cloudhsm": {
		Name: "cloudhsm", Vendor: "AWS CloudHSM (Client SDK 5)",
		// CKA_MODIFIABLE and CKA_PRIVATE may only be given at their default
		// (true); the key's owner can change usages after creation anyway.
		Omit: map[uint][]uint{
			pkcs11.CKO_SECRET_KEY:  {pkcs11.CKA_MODIFIABLE},
			pkcs11.CKO_PRIVATE_KEY: {pkcs11.CKA_MODIFIABLE},
			pkcs11.CKO_PUBLIC_KEY:  {pkcs11.CKA_MODIFIABLE, pkcs11.CKA_PRIVATE},
		},
		Waivers: []Waiver{
			{Attr: AttrModifiable, Why: "CloudHSM takes CKA_MODIFIABLE only at its default (true); the key's owner may change its usages after creation"},
		},
		WrapCandidates:  []Mech{{ckmCloudHSMAESKeyWrapZeroPad, "CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD"}},
		DeclaredWrap:    ckmCloudHSMAESKeyWrapZeroPad,
		AmbiguousErrors: []uint{pkcs11.CKR_FUNCTION_FAILED},
		MaxSessions:     1024,
		PINFormat:       `"<crypto user name>:<password>"`,
		CheckPIN: func(pin []byte) error {
			if i := bytes.IndexByte(pin, ':'); i <= 0 || i == len(pin)-1 {
				return fmt.Errorf("%w: CloudHSM expects <crypto user>:<password>", errPINFormat)
			}
			return nil
		},
	},
	"luna": {
		Name: "luna", Vendor: "Thales Luna 7",
		WrapCandidates: []Mech{{ckmLunaAESKWP, "CKM_AES_KWP (Luna)"}},
		DeclaredWrap:   ckmLunaAESKWP,
		// Luna documents a 64 KiB limit on single-part symmetric operations.
		MaxGCMInput: 64 << 10,
		PINFormat:   "the partition's crypto officer or crypto user password",
	},
	"nshield": {
		Name: "nshield", Vendor: "Entrust nShield (nCipherKM PKCS#11)",
		PINFormat: "the passphrase of the operator card set or softcard",
	},
	"yubihsm": {
		Name: "yubihsm", Vendor: "Yubico YubiHSM 2",
		// yubihsm_pkcs11 refuses, in an HMAC key template, every attribute it
		// does not map to a YubiHSM capability (CKR_ATTRIBUTE_TYPE_INVALID);
		// their values are fixed.
		Omit: map[uint][]uint{
			pkcs11.CKO_SECRET_KEY: {pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_MODIFIABLE,
				pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE},
		},
		// The connector holds 16 sessions and reports "effectively infinite".
		MaxSessions: 16,
		PINFormat:   "4 hex digits of the authentication key ID, then its password (0001password)",
		CheckPIN: func(pin []byte) error {
			if len(pin) < 5 || !isHex(pin[:4]) {
				return fmt.Errorf("%w: YubiHSM expects 4 hex digits of the authentication key id followed by its password", errPINFormat)
			}
			return nil
		},
	},
	"generic": {
		Name: "generic", Vendor: "an unknown PKCS#11 module",
		// Nothing is assumed; codes that may hide a caller's bad input are
		// disambiguated before a recovery is started.
		AmbiguousErrors: []uint{pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_FUNCTION_FAILED},
		PINFormat:       "as the vendor documents",
	},
}

// ProfileNames lists the built-in profiles, sorted.
func ProfileNames() []string {
	out := make([]string, 0, len(Profiles))
	for n := range Profiles {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// LookupProfile returns the named profile.
func LookupProfile(name string) (*Profile, error) {
	p, ok := Profiles[name]
	if !ok {
		return nil, fmt.Errorf("%w: unknown hsm profile %q (one of %s)", ErrInvalidInput, name, strings.Join(ProfileNames(), ", "))
	}
	return p, nil
}

// detectProfile picks a profile from the module's manufacturer ID when the
// configuration names none.
func detectProfile(manufacturer string) *Profile {
	m := strings.ToLower(manufacturer)
	switch {
	case strings.Contains(m, "softhsm"):
		return Profiles["softhsm"]
	case strings.Contains(m, "mozilla"):
		return Profiles["nss"]
	}
	return Profiles["generic"]
}
