package hsm

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
	"math/big"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// Capability names: fixed, so they can label metrics.
const (
	CapAESGCM      = "aes_gcm"          // AES-256-GCM encrypt/decrypt (Encrypt, Decrypt)
	CapKeyWrap     = "aes_key_wrap_pad" // RFC 5649 wrap/unwrap (data keys)
	CapRSAOAEP     = "rsa_oaep"         // wrapping a data key to a recipient
	CapHMACSHA256  = "hmac_sha256"      // MAC, VerifyMAC, the store's MAC key
	CapExtractGate = "extract_refused"  // the token refuses to wrap out a non-extractable key
)

// Capability is one thing Custody needs from the token, as the probe found
// it at the last (re)initialisation.
type Capability struct {
	Name string `json:"name"`
	// OK: the features that need it are served.
	OK bool `json:"ok"`
	// Mechanism is the PKCS#11 mechanism Custody uses for it.
	Mechanism Mech `json:"mechanism"`
	// Mode is the parameter form chosen: "caller_iv" or "token_iv" (GCM),
	// "sha256" or "sha1" (OAEP), the HMAC key type, or "" .
	Mode string `json:"mode,omitempty"`
	// Verified: the token's output was compared with a Go computation
	// (false: the vendor profile declares it, or it is missing).
	Verified bool `json:"verified"`
	// Detail says what the probe saw: why it is missing, what was tried.
	Detail string `json:"detail,omitempty"`
}

// Capabilities are what the token really does, per the probe run at every
// (re)initialisation with keys of the module's own, never with a caller's
// input. A missing capability disables only the operations that need it.
type Capabilities struct {
	Profile string `json:"profile"`
	// Generation counts the module's (re)initialisations: every one probes
	// again, so a recovered token is never served on stale decisions.
	Generation uint64 `json:"generation"`
	// Mechanisms lists the mechanisms Custody uses that the token lacks.
	Missing []string   `json:"missing_mechanisms,omitempty"`
	GCM     Capability `json:"aes_gcm"`
	Wrap    Capability `json:"aes_key_wrap_pad"`
	OAEP    Capability `json:"rsa_oaep"`
	HMAC    Capability `json:"hmac_sha256"`
	// Extract is OK when the token refused to wrap out a non-extractable
	// scratch key (and to reveal a sensitive one).
	Extract Capability `json:"extract_refused"`

	// What the operations use.
	gcmTokenIV  bool
	oaepHash    crypto.Hash
	hmacKeyType uint
	// badInput are return codes the probe saw for a bad GCM tag or a bad
	// wrapped key: on this token they mean the caller's input, not a fault.
	badInput []uint
}

// List returns the capabilities in a fixed order.
func (c Capabilities) List() []Capability {
	return []Capability{c.GCM, c.Wrap, c.OAEP, c.HMAC, c.Extract}
}

func (c *Capabilities) badInputCode(code uint) bool {
	for _, b := range c.badInput {
		if b == code {
			return true
		}
	}
	return false
}

// OAEPHash is the hash RSA-OAEP uses on this token (0 when unavailable).
func (c Capabilities) OAEPHash() crypto.Hash { return c.oaepHash }

func (c Capability) unsupported(what string) error {
	return fmt.Errorf("%w: %s needs %s: %s", ErrUnsupported, what, c.describe(), c.Detail)
}

func (c Capability) describe() string {
	switch c.Name {
	case CapAESGCM:
		return "CKM_AES_GCM (AES-256-GCM with a 96-bit IV)"
	case CapKeyWrap:
		return "AES key wrap with padding (RFC 5649)"
	case CapRSAOAEP:
		return "CKM_RSA_PKCS_OAEP"
	case CapHMACSHA256:
		return "CKM_SHA256_HMAC"
	case CapExtractGate:
		return "a token that refuses to wrap out non-extractable keys"
	}
	return c.Name
}

// probeRSA is the module's own recipient key for the OAEP probe: generated
// once per process, never a caller's key.
var probeRSA = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })

// prober runs the capability probe on the pinned session under the
// module's write lock.
type prober struct {
	m    *Module
	p    *pkcs11.Ctx
	sh   pkcs11.SessionHandle
	prof *Profile
	made []pkcs11.ObjectHandle
}

func (pr *prober) has(mech uint) bool { return pr.m.has(mech) }

func (pr *prober) gen(mech uint, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	h, err := pr.p.GenerateKey(pr.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pr.prof.filter(pkcs11.CKO_SECRET_KEY, tmpl))
	if err == nil {
		pr.made = append(pr.made, h)
	}
	return h, err
}

func (pr *prober) cleanup() {
	for _, h := range pr.made {
		_ = pr.p.DestroyObject(pr.sh, h)
	}
	pr.made = nil
}

// scratchAES makes a session AES-256 key for the probe. readable keys are
// non-sensitive and extractable, so the probe can compute in Go what the
// token should have produced.
func (pr *prober) scratchAES(readable bool, usage ...uint) (pkcs11.ObjectHandle, []byte, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, !readable),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
	}
	for _, u := range usage {
		tmpl = append(tmpl, pkcs11.NewAttribute(u, true))
	}
	h, err := pr.gen(pkcs11.CKM_AES_KEY_GEN, tmpl)
	if err != nil || !readable {
		return h, nil, err
	}
	got, err := pr.p.GetAttributeValue(pr.sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil {
		return h, nil, err
	}
	if len(got[0].Value) != 32 {
		return h, nil, fmt.Errorf("scratch key read back with %d bytes", len(got[0].Value))
	}
	return h, got[0].Value, nil
}

func codeOf(err error) string {
	if code, ok := rv(err); ok {
		return pkcs11.Error(code).Error()
	}
	return err.Error()
}

// probeCapsLocked decides, per capability, which mechanism and parameter
// form to use. It only ever uses scratch session keys of its own and
// destroys them. Caller holds mu for writing; m.p is initialised and
// logged in on m.pinned.
func (m *Module) probeCapsLocked() *Capabilities {
	pr := &prober{m: m, p: m.p, sh: m.pinned, prof: m.profile}
	defer pr.cleanup()
	c := &Capabilities{Profile: m.profile.Name, Generation: m.gen, Missing: append([]string(nil), m.missing...)}
	c.GCM = Capability{Name: CapAESGCM, Mechanism: Mech{pkcs11.CKM_AES_GCM, "CKM_AES_GCM"}}
	c.Wrap = Capability{Name: CapKeyWrap}
	c.OAEP = Capability{Name: CapRSAOAEP, Mechanism: Mech{pkcs11.CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP"}}
	c.HMAC = Capability{Name: CapHMACSHA256, Mechanism: Mech{pkcs11.CKM_SHA256_HMAC, "CKM_SHA256_HMAC"}}
	c.Extract = Capability{Name: CapExtractGate}

	if !pr.has(pkcs11.CKM_AES_KEY_GEN) {
		const why = "the token lacks CKM_AES_KEY_GEN"
		c.GCM.Detail, c.Wrap.Detail, c.OAEP.Detail, c.Extract.Detail = why, why, why, why
		pr.probeHMAC(c)
		return c
	}
	// A key the probe may read (a readable KEK); failing that, one it may
	// only use (tokens such as NSS in FIPS mode refuse readable keys).
	usage := []uint{pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP}
	kek, kekValue, err := pr.scratchAES(true, usage...)
	readable := err == nil
	var why string
	if !readable {
		why = fmt.Sprintf("the token refused a readable scratch key (%s), so its output could not be compared with Go", codeOf(err))
		kek, _, err = pr.scratchAES(false, usage...)
		if err != nil {
			d := "the token refused a session AES key: " + codeOf(err)
			c.GCM.Detail, c.Wrap.Detail, c.OAEP.Detail, c.Extract.Detail = d, d, d, d
			pr.probeHMAC(c)
			return c
		}
	}
	target, targetValue, err := pr.scratchAES(readable)
	if err != nil {
		target = 0
	}
	pr.probeGCM(c, kek, kekValue, why)
	pr.probeWrap(c, kek, kekValue, target, targetValue, why)
	pr.probeOAEP(c, target, targetValue, why)
	pr.probeHMAC(c)
	pr.probeExtract(c, kek)
	return c
}

// GCM IV forms the probe can find.
type gcmMode int

const (
	gcmRefused      gcmMode = iota // unusable: the reason says why
	gcmCallerIV                    // the token uses the 96-bit IV Custody draws
	gcmTokenIV                     // the token draws a 96-bit IV and writes it back
	gcmRetryTokenIV                // the token refused a caller IV: try a buffer it may fill
)

// decideGCM reads one probe encryption: the IV sent, the ciphertext and the
// IV read back from the parameters afterwards, or the error. Custody's
// envelope keeps a 12-byte IV field and the ciphertext with a 16-byte tag,
// nothing else.
func decideGCM(ptLen int, sent, ct, back []byte, err error) (gcmMode, []byte, string) {
	switch {
	case err != nil:
		return gcmRetryTokenIV, nil, codeOf(err)
	case len(ct) != ptLen+TagSize:
		return gcmRefused, nil, fmt.Sprintf("the token returned %d bytes for %d of plaintext: it appends an IV of %d bytes of its own, and the envelope keeps a 12-byte IV",
			len(ct), ptLen, len(ct)-ptLen-TagSize)
	case bytes.Equal(back, sent):
		return gcmCallerIV, sent, ""
	case len(back) != IVSize:
		return gcmRefused, nil, fmt.Sprintf("the token generates %d-byte IVs; the envelope keeps a 12-byte IV", len(back))
	case bytes.Equal(back, make([]byte, IVSize)):
		return gcmRefused, nil, "the token wrote an all-zero IV back"
	}
	// The token wrote its own IV over ours.
	return gcmTokenIV, back, ""
}

// probeGCM decides between a caller-chosen IV and an IV the token
// generates and writes back into the parameters.
func (pr *prober) probeGCM(c *Capabilities, kek pkcs11.ObjectHandle, kekValue []byte, why string) {
	if !pr.has(pkcs11.CKM_AES_GCM) {
		c.GCM.Detail = "not in the token's mechanism list"
		return
	}
	pt := []byte("custody capability probe, 32 b.")
	aad := []byte("custody-probe-aad")
	try := func(iv []byte) (ct, ivBack []byte, err error) {
		params := pkcs11.NewGCMParams(iv, aad, TagSize*8)
		defer params.Free()
		if err := pr.p.EncryptInit(pr.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, kek); err != nil {
			return nil, nil, err
		}
		// Room for an IV the token might append, so that case can be named.
		ct, err = pr.m.raw.encrypt(pr.sh, pt, len(pt)+TagSize+32)
		return ct, params.IV(), err
	}
	callerIV := make([]byte, IVSize)
	_, _ = rand.Read(callerIV)
	ct, back, err := try(callerIV)
	mode, iv, detail := decideGCM(len(pt), callerIV, ct, back, err)
	if mode == gcmRetryTokenIV {
		// Refused a caller IV: offer a zeroed buffer for the token to fill.
		zero := make([]byte, IVSize)
		ct, back, err = try(zero)
		mode, iv, detail = decideGCM(len(pt), zero, ct, back, err)
		if mode == gcmRetryTokenIV || mode == gcmCallerIV {
			// Refused again, or "accepted" an all-zero IV it did not replace.
			mode, detail = gcmRefused, fmt.Sprintf("the token refused a caller IV and wrote no %d-byte IV of its own", IVSize)
			if err != nil {
				detail = "the token refused both a caller IV and a buffer for its own IV: " + codeOf(err)
			}
		}
	}
	if mode == gcmRefused {
		c.GCM.Detail = detail
		return
	}
	c.gcmTokenIV = mode == gcmTokenIV
	if kekValue != nil {
		block, _ := aes.NewCipher(kekValue)
		g, _ := cipher.NewGCM(block)
		if want := g.Seal(nil, iv, pt, aad); !bytes.Equal(ct, want) {
			c.GCM.Detail = "the token's AES-GCM output differs from Go's"
			return
		}
		c.GCM.Verified = true
	}
	// Decrypt it back, then with a flipped tag: the code the token gives
	// for a bad tag is the caller's fault on this token, whatever it is.
	dec := func(ct []byte) ([]byte, error) {
		params := pkcs11.NewGCMParams(iv, aad, TagSize*8)
		defer params.Free()
		if err := pr.p.DecryptInit(pr.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, kek); err != nil {
			return nil, err
		}
		return pr.m.raw.decrypt(pr.sh, ct, len(ct))
	}
	got, err := dec(ct)
	if err != nil || !bytes.Equal(got, pt) {
		c.GCM.Detail = "the token could not decrypt its own AES-GCM output"
		if err != nil {
			c.GCM.Detail += ": " + codeOf(err)
		}
		return
	}
	bad := bytes.Clone(ct)
	bad[len(bad)-1] ^= 1
	if _, err := dec(bad); err == nil {
		c.GCM.Detail = "the token accepted a ciphertext with a flipped tag bit"
		return
	} else if code, ok := rv(err); ok {
		c.badInput = append(c.badInput, code)
	}
	c.GCM.OK = true
	c.GCM.Mode = "caller_iv"
	if c.gcmTokenIV {
		c.GCM.Mode = "token_iv"
	}
	if why != "" {
		c.GCM.Detail = why
	}
}

// probeWrap finds the mechanism that is RFC 5649 on this token: vendor
// candidates first, then 0x210B (PKCS#11 v3.0's CKM_AES_KEY_WRAP_KWP),
// then 0x210A (SoftHSM's number for it; PKCS#7 padding elsewhere).
func (pr *prober) probeWrap(c *Capabilities, kek pkcs11.ObjectHandle, kekValue []byte, target pkcs11.ObjectHandle, targetValue []byte, why string) {
	cands := append(append([]Mech(nil), pr.prof.WrapCandidates...),
		Mech{ckmAESKeyWrapKWP, "CKM_AES_KEY_WRAP_KWP"}, Mech{pkcs11.CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"})
	if target == 0 {
		c.Wrap.Detail = "the token refused an extractable scratch key to wrap"
		return
	}
	var tried []string
	var chosen *Mech
	for _, mech := range cands {
		if !pr.has(mech.Code) {
			continue
		}
		out, err := pr.m.raw.wrap(pr.sh, mech.Code, kek, target, wrapRoom)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %s", mech, codeOf(err)))
			continue
		}
		if kekValue == nil {
			// Cannot compare: accept only what the profile declares, after a
			// round trip through the token.
			if chosen != nil || mech.Code != pr.prof.DeclaredWrap || len(out) != DataKeySize+8 || !pr.unwraps(mech.Code, kek, out, nil) {
				tried = append(tried, fmt.Sprintf("%s: not verifiable", mech))
				continue
			}
			chosen = &mech
			c.Wrap.OK, c.Wrap.Mechanism = true, mech
			tried = append(tried, fmt.Sprintf("%s: declared RFC 5649 by the %s profile; %s", mech, pr.prof.Name, why))
			continue
		}
		want, _ := rfc5649Wrap(kekValue, targetValue)
		if !bytes.Equal(out, want) {
			tried = append(tried, fmt.Sprintf("%s: output is not RFC 5649", mech))
			continue
		}
		// And unwrapping an RFC 5649 blob made in Go gives the key back.
		if !pr.unwraps(mech.Code, kek, want, targetValue) {
			tried = append(tried, fmt.Sprintf("%s: does not unwrap RFC 5649", mech))
			continue
		}
		if chosen != nil {
			tried = append(tried, fmt.Sprintf("%s: RFC 5649 too", mech))
			continue
		}
		// A wrapped key that does not open: its code is a caller's fault here.
		bad := bytes.Clone(want)
		bad[3] ^= 0x80
		if _, err := pr.p.UnwrapKey(pr.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech.Code, nil)}, kek, bad, pr.unwrapTemplate()); err == nil {
			tried = append(tried, fmt.Sprintf("%s: unwrapped a tampered blob", mech))
			continue
		} else if code, ok := rv(err); ok {
			c.badInput = append(c.badInput, code)
		}
		chosen = &mech
		c.Wrap.OK, c.Wrap.Mechanism, c.Wrap.Verified = true, mech, true
		tried = append(tried, fmt.Sprintf("%s: RFC 5649, verified", mech))
	}
	switch {
	case len(tried) == 0:
		c.Wrap.Detail = "no AES key wrap with padding mechanism in the token's mechanism list"
	case chosen == nil:
		c.Wrap.Detail = "tried " + strings.Join(tried, "; ")
	default:
		c.Wrap.Detail = strings.Join(tried, "; ")
	}
}

func (pr *prober) unwrapTemplate() []*pkcs11.Attribute {
	return pr.prof.filter(pkcs11.CKO_SECRET_KEY, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
	})
}

// unwraps reports whether the token unwraps blob with mech under kek (to a
// key with value want, when want is given).
func (pr *prober) unwraps(mech uint, kek pkcs11.ObjectHandle, blob, want []byte) bool {
	tmpl := pr.unwrapTemplate()
	if want == nil {
		tmpl = pr.prof.filter(pkcs11.CKO_SECRET_KEY, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		})
	}
	h, err := pr.p.UnwrapKey(pr.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, kek, blob, tmpl)
	if err != nil {
		return false
	}
	pr.made = append(pr.made, h)
	if want == nil {
		return true
	}
	got, err := pr.p.GetAttributeValue(pr.sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	return err == nil && bytes.Equal(got[0].Value, want)
}

// probeOAEP decides the OAEP hash once, with the module's own recipient
// key: SHA-256 where the token can, else SHA-1. No caller's key ever
// changes it.
func (pr *prober) probeOAEP(c *Capabilities, target pkcs11.ObjectHandle, targetValue []byte, why string) {
	if !pr.has(pkcs11.CKM_RSA_PKCS_OAEP) {
		c.OAEP.Detail = "not in the token's mechanism list"
		return
	}
	if target == 0 {
		c.OAEP.Detail = "the token refused an extractable scratch key to wrap"
		return
	}
	priv, err := probeRSA()
	if err != nil {
		c.OAEP.Detail = "generating the probe's RSA key: " + err.Error()
		return
	}
	rh, err := pr.p.CreateObject(pr.sh, pr.prof.filter(pkcs11.CKO_PUBLIC_KEY, recipientTemplate(priv.N.Bytes(), big.NewInt(int64(priv.E)).Bytes())))
	if err != nil {
		c.OAEP.Detail = "the token refused to import an RSA public key as a session object: " + codeOf(err)
		return
	}
	pr.made = append(pr.made, rh)
	var tried []string
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA1} {
		hash, mgf := oaepParams(h)
		out, err := pr.m.raw.wrapOAEP(pr.sh, hash, mgf, rh, target, priv.Size())
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %s", oaepName(h), codeOf(err)))
			continue
		}
		hf := sha256.New()
		if h == crypto.SHA1 {
			hf = sha1.New()
		}
		pt, err := rsa.DecryptOAEP(hf, nil, priv, out, nil)
		if err != nil || (targetValue != nil && !bytes.Equal(pt, targetValue)) {
			tried = append(tried, fmt.Sprintf("%s: output does not decrypt to the key", oaepName(h)))
			continue
		}
		c.oaepHash = h
		c.OAEP.OK, c.OAEP.Mode = true, strings.ToLower(strings.ReplaceAll(h.String(), "-", ""))
		c.OAEP.Verified = targetValue != nil
		c.OAEP.Detail = strings.Join(tried, "; ")
		if !c.OAEP.Verified && why != "" {
			c.OAEP.Detail = strings.TrimPrefix(c.OAEP.Detail+"; "+why, "; ")
		}
		return
	}
	c.OAEP.Detail = "tried " + strings.Join(tried, "; ")
}

func oaepName(h crypto.Hash) string {
	if h == crypto.SHA256 {
		return "RSA-OAEP-SHA256"
	}
	return "RSA-OAEP-SHA1"
}

// probeHMAC finds the key type the token computes HMAC-SHA256 with:
// CKK_GENERIC_SECRET, or CKK_SHA256_HMAC (YubiHSM 2).
func (pr *prober) probeHMAC(c *Capabilities) {
	if !pr.has(pkcs11.CKM_SHA256_HMAC) || !pr.has(pkcs11.CKM_GENERIC_SECRET_KEY_GEN) {
		c.HMAC.Detail = "CKM_SHA256_HMAC or CKM_GENERIC_SECRET_KEY_GEN is not in the token's mechanism list"
		return
	}
	msg := []byte("custody capability probe")
	var tried []string
	for _, kt := range []struct {
		t    uint
		name string
	}{{pkcs11.CKK_GENERIC_SECRET, "CKK_GENERIC_SECRET"}, {pkcs11.CKK_SHA256_HMAC, "CKK_SHA256_HMAC"}} {
		for _, readable := range []bool{true, false} {
			h, err := pr.gen(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt.t),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, !readable),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, readable),
				pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			})
			if err != nil {
				tried = append(tried, fmt.Sprintf("%s: %s", kt.name, codeOf(err)))
				continue
			}
			if err := pr.p.SignInit(pr.sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, h); err != nil {
				tried = append(tried, fmt.Sprintf("%s: %s", kt.name, codeOf(err)))
				continue
			}
			mac, err := pr.p.Sign(pr.sh, msg)
			if err != nil || len(mac) != sha256.Size {
				tried = append(tried, fmt.Sprintf("%s: sign failed", kt.name))
				continue
			}
			if readable {
				got, err := pr.p.GetAttributeValue(pr.sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
				if err != nil {
					tried = append(tried, fmt.Sprintf("%s: %s", kt.name, codeOf(err)))
					continue
				}
				hm := hmac.New(sha256.New, got[0].Value)
				hm.Write(msg)
				if !hmac.Equal(hm.Sum(nil), mac) {
					tried = append(tried, fmt.Sprintf("%s: HMAC differs from Go's", kt.name))
					continue
				}
			}
			c.hmacKeyType = kt.t
			c.HMAC.OK, c.HMAC.Mode, c.HMAC.Verified = true, strings.ToLower(strings.TrimPrefix(kt.name, "CKK_")), readable
			c.HMAC.Detail = strings.Join(tried, "; ")
			return
		}
	}
	c.HMAC.Detail = "tried " + strings.Join(tried, "; ")
}

// probeExtract checks that the token enforces what custody rests on: a
// sensitive key's value cannot be read and a non-extractable key cannot be
// wrapped out, even by the logged-in user.
func (pr *prober) probeExtract(c *Capabilities, kek pkcs11.ObjectHandle) {
	h, err := pr.gen(pkcs11.CKM_AES_KEY_GEN, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	})
	if err != nil {
		c.Extract.Detail = "the token refused a non-extractable scratch key: " + codeOf(err)
		return
	}
	var leaks []string
	if cp, err := pr.p.CopyObject(pr.sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)}); err == nil {
		pr.made = append(pr.made, cp)
		if got, err := pr.p.GetAttributeValue(pr.sh, cp, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil)}); err == nil && len(got[0].Value) == 1 && got[0].Value[0] != 0 {
			leaks = append(leaks, "copied it to an extractable key with C_CopyObject")
		}
	}
	if got, err := pr.p.GetAttributeValue(pr.sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil && len(got[0].Value) > 0 {
		c.Extract.Detail = "the token returned CKA_VALUE of a sensitive key"
		return
	}
	var wrapped []string
	seen := map[uint]bool{}
	for _, mech := range []Mech{c.Wrap.Mechanism, {pkcs11.CKM_AES_KEY_WRAP, "CKM_AES_KEY_WRAP"}, {pkcs11.CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"}, {ckmAESKeyWrapKWP, "CKM_AES_KEY_WRAP_KWP"}} {
		if mech.Code == 0 || seen[mech.Code] || !pr.has(mech.Code) {
			continue
		}
		seen[mech.Code] = true
		if _, err := pr.m.raw.wrap(pr.sh, mech.Code, kek, h, wrapRoom); err == nil {
			wrapped = append(wrapped, mech.String())
		}
	}
	if len(wrapped) > 0 {
		leaks = append(leaks, "wrapped it out with "+strings.Join(wrapped, ", "))
	}
	if len(leaks) > 0 {
		c.Extract.Detail = "given a key with CKA_EXTRACTABLE=false, the token " + strings.Join(leaks, "; and ")
		return
	}
	c.Extract.OK, c.Extract.Verified = true, true
	c.Extract.Detail = "sensitive value unreadable; wrapping out or copying to extractable refused"
}
