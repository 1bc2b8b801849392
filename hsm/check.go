package hsm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// CheckReport is the verdict of Check: what a site must know about its own
// HSM before it holds keys in custody there.
type CheckReport struct {
	Token   string `json:"token"`
	Module  string `json:"module"`
	Profile string `json:"profile"`
	Vendor  string `json:"vendor"`
	// Capabilities is what the probe decided.
	Capabilities Capabilities `json:"capabilities"`
	// Keys is one scratch key per kind: made like a key in custody, read
	// back, attacked and destroyed.
	Keys []CheckedKey `json:"keys"`
	// Fit: custody holds on this token. Every scratch key that could be made
	// read back as custody requires (or waived by the profile, listed in
	// Unverified), and the token refused every attempt to get a key out.
	Fit bool `json:"fit"`
	// Unverified lists custody properties this token cannot be shown to
	// have; keys made on it record them.
	Unverified []string `json:"unverified,omitempty"`
	// Disabled lists the capabilities the token lacks: the features that
	// need them are refused, everything else is served.
	Disabled []string `json:"disabled,omitempty"`
	// Problems says why the token is not fit.
	Problems []string `json:"problems,omitempty"`
}

// CheckedKey is one scratch key of Check.
type CheckedKey struct {
	Kind string `json:"kind"`
	// Supported: the token can make this kind; otherwise Error says why.
	Supported  bool       `json:"supported"`
	Attributes Attributes `json:"attributes"`
	Unverified []string   `json:"unverified,omitempty"`
	// Refused lists the attacks the token refused; Allowed those it did not.
	Refused   []string `json:"refused,omitempty"`
	Allowed   []string `json:"allowed,omitempty"`
	Error     string   `json:"error,omitempty"`
	Destroyed bool     `json:"destroyed"`
}

// Check opens the token named by cfg, runs the capability probe, makes one
// scratch key of every kind exactly as custody makes keys, reads each back
// under the profile, tries to get it out (read its value, flip it to
// extractable or non-sensitive, wrap it out, copy it to an extractable
// key), and destroys every scratch key before returning. It is what
// `custodyctl hsm check` runs before production; it changes nothing else
// on the token.
func Check(ctx context.Context, cfg Config) (*CheckReport, error) {
	m, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	c := m.Capabilities()
	r := &CheckReport{Token: m.tokenName(), Module: m.uri.ModulePath, Profile: c.Profile, Vendor: m.profile.Vendor, Capabilities: c, Fit: true}
	for _, cp := range c.List() {
		if cp.OK {
			continue
		}
		if cp.Name == CapExtractGate {
			r.Fit = false
			r.Problems = append(r.Problems, "the token lets keys with CKA_EXTRACTABLE=false out: "+cp.Detail)
			continue
		}
		r.Disabled = append(r.Disabled, fmt.Sprintf("%s: %s", cp.Name, cp.Detail))
	}
	tag := make([]byte, 4)
	_, _ = rand.Read(tag)
	prefix := "custody-hsm-check:" + hex.EncodeToString(tag) + ":"
	// A scratch wrapping key to try wrapping the others out with.
	var wrapper *Key
	if c.Wrap.OK {
		if w, _, err := m.CreateKey(ctx, KindAES256, prefix+"wrapper"); err == nil {
			wrapper = &w
			defer func() { _ = m.Destroy(context.WithoutCancel(ctx), w) }()
		}
	}
	var unverified AttrSet
	for _, kind := range []Kind{KindAES256, KindHMACSHA256, KindECDSAP256, KindECDSAP384, KindEd25519, KindRSA3072PSS} {
		ck := CheckedKey{Kind: kind.String()}
		k, attrs, err := m.CreateKey(ctx, kind, prefix+kind.String())
		switch {
		case errors.Is(err, ErrUnsupported):
			ck.Error = err.Error()
			r.Keys = append(r.Keys, ck)
			continue
		case err != nil:
			ck.Error = err.Error()
			ck.Supported = true
			r.Fit = false
			r.Problems = append(r.Problems, fmt.Sprintf("%s key: %v", kind, err))
			r.Keys = append(r.Keys, ck)
			continue
		}
		ck.Supported, ck.Attributes, ck.Unverified = true, attrs, attrs.Unverified.Strings()
		unverified |= attrs.Unverified
		ck.Refused, ck.Allowed = m.attack(ctx, k, wrapper, c.Wrap.Mechanism.Code)
		if len(ck.Allowed) > 0 {
			r.Fit = false
			r.Problems = append(r.Problems, fmt.Sprintf("%s key: the token let a caller %s", kind, strings.Join(ck.Allowed, " and ")))
		}
		if err := m.Destroy(context.WithoutCancel(ctx), k); err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("%s scratch key %q could not be destroyed: %v", kind, k.Label, err))
		} else {
			ck.Destroyed = true
		}
		r.Keys = append(r.Keys, ck)
	}
	r.Unverified = unverified.Strings()
	return r, nil
}

// attack tries, with raw PKCS#11 as any logged-in user could, to get k out
// of the token. It returns what the token refused and what it allowed.
func (m *Module) attack(ctx context.Context, k Key, wrapper *Key, wrapMech uint) (refused, allowed []string) {
	note := func(what string, err error) {
		if err != nil {
			refused = append(refused, what)
		} else {
			allowed = append(allowed, what)
		}
	}
	_ = m.withSession(ctx, "check", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.tokenHandle(p, sh, k, mainClass(k.Kind))
		if err != nil {
			return err
		}
		secret := uint(pkcs11.CKA_VALUE)
		if k.Kind == KindRSA3072PSS {
			secret = pkcs11.CKA_PRIVATE_EXPONENT
		}
		got, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(secret, nil)})
		if err == nil && len(got) == 1 && len(got[0].Value) == 0 {
			err = errors.New("empty")
		}
		note("read the key's secret value", err)
		note("set CKA_EXTRACTABLE to true", p.SetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)}))
		note("set CKA_SENSITIVE to false", p.SetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false)}))
		cp, err := p.CopyObject(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)})
		if err == nil {
			_ = p.DestroyObject(sh, cp)
		}
		note("copy it to an extractable key", err)
		if wrapper != nil && wrapMech != 0 {
			wh, err := m.tokenHandle(p, sh, *wrapper, pkcs11.CKO_SECRET_KEY)
			if err == nil {
				_, err = m.raw.wrap(sh, wrapMech, wh, h, 4096)
				note("wrap it out under another key", err)
			}
		}
		return nil
	})
	return refused, allowed
}
