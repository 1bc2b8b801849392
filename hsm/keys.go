package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"

	"github.com/custodyhq/custody/internal/custody"
	"github.com/miekg/pkcs11"
)

// Key names one key in custody: what callers persist to find it again.
type Key struct {
	ID    []byte // CKA_ID, 16 random bytes
	Label string // CKA_LABEL, unique on the token
	Kind  Kind
}

func (k Key) String() string {
	return fmt.Sprintf("%s %q id=%s", k.Kind, k.Label, hex.EncodeToString(k.ID))
}

// Attributes are the custody attributes read back from the token.
type Attributes struct {
	Token            bool `json:"token"`
	Private          bool `json:"private"`
	Sensitive        bool `json:"sensitive"`
	Extractable      bool `json:"extractable"`
	Modifiable       bool `json:"modifiable"`
	NeverExtractable bool `json:"never_extractable"`
	AlwaysSensitive  bool `json:"always_sensitive"`
	Local            bool `json:"local"`
	// Unverified are the custody properties this token could not be shown
	// to have: attributes the vendor profile says it cannot set (read back
	// otherwise), and AttrExtractEnforced when the start-up probe saw the
	// token wrap out a non-extractable key. Key records, `key get` and the
	// ceremony transcript carry them; they never pass silently.
	Unverified AttrSet `json:"unverified,omitempty"`
}

// requirements are the custody attributes and whether a read-back has them.
func (a Attributes) requirements() []struct {
	attr Attr
	ok   bool
} {
	return []struct {
		attr Attr
		ok   bool
	}{
		{AttrToken, a.Token}, {AttrPrivate, a.Private}, {AttrSensitive, a.Sensitive},
		{AttrExtractable, !a.Extractable}, {AttrModifiable, !a.Modifiable},
		{AttrNeverExtractable, a.NeverExtractable}, {AttrAlwaysSensitive, a.AlwaysSensitive}, {AttrLocal, a.Local},
	}
}

// InCustody reports whether the attributes are those of a key that has never
// left, and can never leave, the token, with nothing left unverified.
func (a Attributes) InCustody() bool {
	return a.Accepted() && a.Unverified == 0
}

// Accepted reports whether a key with these attributes may be recorded, by
// the one custody rule (custody.Attrs.Recordable): every custody attribute
// holds, or is one a vendor profile may record as unverified and is
// recorded so.
func (a Attributes) Accepted() bool { return a.Custody().Recordable() == nil }

// Custody returns the attributes in the form the custody rule, key records
// and the ceremony transcript share.
func (a Attributes) Custody() custody.Attrs {
	return custody.Attrs{Token: a.Token, Private: a.Private, Sensitive: a.Sensitive, AlwaysSensitive: a.AlwaysSensitive,
		Extractable: a.Extractable, NeverExtractable: a.NeverExtractable, Local: a.Local, Modifiable: a.Modifiable,
		Unverified: a.Unverified.Strings()}
}

// AttrSet is a set of custody attributes.
type AttrSet uint16

var attrBits = []Attr{AttrToken, AttrPrivate, AttrSensitive, AttrExtractable, AttrModifiable,
	AttrNeverExtractable, AttrAlwaysSensitive, AttrLocal, AttrExtractEnforced}

func attrBit(a Attr) AttrSet {
	for i, b := range attrBits {
		if b == a {
			return 1 << i
		}
	}
	return 0
}

// Has reports whether a is in the set.
func (s AttrSet) Has(a Attr) bool { return s&attrBit(a) != 0 }

// With returns the set with a added.
func (s AttrSet) With(a Attr) AttrSet { return s | attrBit(a) }

// List returns the attributes in the set, in a fixed order.
func (s AttrSet) List() []Attr {
	var out []Attr
	for i, b := range attrBits {
		if s&(1<<i) != 0 {
			out = append(out, b)
		}
	}
	return out
}

// MarshalJSON writes the set as a list of names.
func (s AttrSet) MarshalJSON() ([]byte, error) {
	return json.Marshal(s.Strings())
}

// Strings is List as strings.
func (s AttrSet) Strings() []string {
	var out []string
	for _, a := range s.List() {
		out = append(out, string(a))
	}
	return out
}

// judge applies the profile to attributes read back from the token: an
// attribute the profile waives is recorded as unverified, anything else
// that is not as custody requires refuses the key.
func (m *Module) judge(a Attributes) (Attributes, error) {
	var bad []string
	for _, r := range a.requirements() {
		if r.ok {
			continue
		}
		if _, waived := m.profile.Waived(r.attr); waived && !mandatory[r.attr] {
			a.Unverified = a.Unverified.With(r.attr)
			continue
		}
		bad = append(bad, string(r.attr))
	}
	if !m.capsNow().Extract.OK {
		a.Unverified = a.Unverified.With(AttrExtractEnforced)
	}
	if len(bad) > 0 {
		return a, fmt.Errorf("%w: read back with %s not as custody requires (profile %s)", ErrKeyPolicy, strings.Join(bad, ", "), m.profile.Name)
	}
	return a, nil
}

// Why explains an unverified attribute on this token, for records and
// transcripts.
func (m *Module) Why(a Attr) string {
	if a == AttrExtractEnforced {
		return "the token wrapped out a non-extractable scratch key at start-up: " + m.capsNow().Extract.Detail
	}
	if w, ok := m.profile.Waived(a); ok {
		return w.Why
	}
	return ""
}

type handleKey struct {
	id    string
	class uint
}

// CreateKey generates a key of the given kind on the token under label, reads
// its attributes back and returns it only if it is in custody. It refuses a
// label that already exists.
func (m *Module) CreateKey(ctx context.Context, kind Kind, label string) (Key, Attributes, error) {
	if label == "" || len(label) > 128 {
		return Key{}, Attributes{}, fmt.Errorf("%w: key label must be 1..128 bytes", ErrInvalidInput)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return Key{}, Attributes{}, fmt.Errorf("%w: random: %v", ErrUnavailable, err)
	}
	spec, ok := m.templateFor(kind, id, label)
	if !ok {
		return Key{}, Attributes{}, fmt.Errorf("%w: unknown key kind %d", ErrInvalidInput, kind)
	}
	if !m.has(kindMech(kind)) {
		return Key{}, Attributes{}, fmt.Errorf("%w: creating %s keys needs %s, which the token lacks", ErrUnsupported, kind, mechName(kindMech(kind)))
	}
	if c := m.capsNow(); kind == KindHMACSHA256 && !c.HMAC.OK {
		return Key{}, Attributes{}, c.HMAC.unsupported("creating hmac-sha256 keys")
	}
	k := Key{ID: id, Label: label, Kind: kind}
	var attrs Attributes
	err := m.withSession(ctx, "create_key", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		n, err := countObjects(p, sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		}, 1)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: a key labelled %q is already on the token", ErrExists, label)
		}
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(spec.mech, nil)}
		var main, pub pkcs11.ObjectHandle
		if kind.Asymmetric() {
			pub, main, err = p.GenerateKeyPair(sh, mech, spec.pub, spec.priv)
		} else {
			main, err = p.GenerateKey(sh, mech, spec.secret)
		}
		if err != nil {
			return err
		}
		attrs, err = readAttrs(p, sh, main)
		if err == nil {
			attrs, err = m.judge(attrs)
		}
		if err != nil {
			_ = p.DestroyObject(sh, main)
			if kind.Asymmetric() {
				_ = p.DestroyObject(sh, pub)
			}
			return err
		}
		// Cache the new handles: a first use must not search the token
		// (a search scans every object, so n first uses would be O(n²)).
		m.handles.Store(handleKey{id: string(id), class: mainClass(kind)}, main)
		if kind.Asymmetric() {
			m.handles.Store(handleKey{id: string(id), class: pkcs11.CKO_PUBLIC_KEY}, pub)
		}
		return nil
	})
	if err != nil {
		return Key{}, Attributes{}, mapErr("create key", err)
	}
	return k, attrs, nil
}

func readAttrs(p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) (Attributes, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_LOCAL, nil),
	}
	got, err := p.GetAttributeValue(sh, h, tmpl)
	if err != nil {
		return Attributes{}, err
	}
	b := func(i int) bool { return len(got[i].Value) == 1 && got[i].Value[0] != 0 }
	return Attributes{
		Token: b(0), Private: b(1), Sensitive: b(2), Extractable: b(3), Modifiable: b(4),
		NeverExtractable: b(5), AlwaysSensitive: b(6), Local: b(7),
	}, nil
}

// Attributes reads a key's custody attributes from the token.
func (m *Module) Attributes(ctx context.Context, k Key) (Attributes, error) {
	var a Attributes
	err := m.withSession(ctx, "read_attributes", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.tokenHandle(p, sh, k, mainClass(k.Kind))
		if err != nil {
			return err
		}
		a, err = readAttrs(p, sh, h)
		if err == nil {
			a, _ = m.judge(a) // a key already in custody is reported as it is
		}
		return err
	})
	return a, mapErr("read attributes", err)
}

func mainClass(k Kind) uint {
	if k.Asymmetric() {
		return pkcs11.CKO_PRIVATE_KEY
	}
	return pkcs11.CKO_SECRET_KEY
}

func countObjects(p *pkcs11.Ctx, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) (int, error) {
	hs, err := findObjects(p, sh, tmpl, max)
	return len(hs), err
}

func findObjects(p *pkcs11.Ctx, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	hs, _, err := p.FindObjects(sh, max)
	if ferr := p.FindObjectsFinal(sh); err == nil {
		err = ferr
	}
	return hs, err
}

// handle returns the object handle of k's object of the given class, from the
// cache when it holds one for this generation; otherwise it searches once,
// expecting exactly one match. Caller holds mu for reading (inside withSession).
func (m *Module) handle(p *pkcs11.Ctx, sh pkcs11.SessionHandle, k Key, class uint) (pkcs11.ObjectHandle, error) {
	return m.tokenHandle(p, sh, k, class)
}

// tokenHandle finds the token object of k. (No session-object "hot copies":
// SoftHSM refuses C_CopyObject of a CKA_MODIFIABLE=false key with
// CKR_ATTRIBUTE_READ_ONLY, and custody keys are never modifiable.)
func (m *Module) tokenHandle(p *pkcs11.Ctx, sh pkcs11.SessionHandle, k Key, class uint) (pkcs11.ObjectHandle, error) {
	hk := handleKey{id: string(k.ID), class: class}
	if v, ok := m.handles.Load(hk); ok {
		return v.(pkcs11.ObjectHandle), nil
	}
	hs, err := findObjects(p, sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_ID, k.ID),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), // not hot copies
	}, 2)
	if err != nil {
		return 0, err
	}
	switch len(hs) {
	case 0:
		if !m.tokenAlive() {
			return 0, fmt.Errorf("%w: looking for %s", errTokenGone, k)
		}
		return 0, fmt.Errorf("%w: %s", ErrNotFound, k)
	case 1:
	default:
		return 0, fmt.Errorf("%w: %s matches more than one object; refusing to guess", ErrExists, k)
	}
	m.handles.Store(hk, hs[0])
	return hs[0], nil
}

// Find checks that k is on the token, caching its handles so later requests
// do not search. Use it to load keys at start-up.
func (m *Module) Find(ctx context.Context, k Key) error {
	err := m.withSession(ctx, "find_key", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		_, err := m.tokenHandle(p, sh, k, mainClass(k.Kind))
		return err
	})
	return mapErr("find key", err)
}

// FindByLabel finds a key by label, expecting exactly one main object.
func (m *Module) FindByLabel(ctx context.Context, kind Kind, label string) (Key, error) {
	var k Key
	err := m.withSession(ctx, "find_key", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		hs, err := findObjects(p, sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, mainClass(kind)),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		}, 2)
		if err != nil {
			return err
		}
		switch len(hs) {
		case 0:
			return fmt.Errorf("%w: no %s key labelled %q", ErrNotFound, kind, label)
		case 1:
		default:
			return fmt.Errorf("%w: more than one key labelled %q", ErrExists, label)
		}
		got, err := p.GetAttributeValue(sh, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
		if err != nil {
			return err
		}
		k = Key{ID: got[0].Value, Label: label, Kind: kind}
		m.handles.Store(handleKey{id: string(k.ID), class: mainClass(kind)}, hs[0])
		return nil
	})
	return k, mapErr("find key", err)
}

// Destroy deletes every object of k from the token (crypto-shredding). It
// succeeds if the key is already gone.
func (m *Module) Destroy(ctx context.Context, k Key) error {
	err := m.withSession(ctx, "destroy_key", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		hs, err := findObjects(p, sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_ID, k.ID),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		}, 4)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if err := p.DestroyObject(sh, h); err != nil {
				return err
			}
		}
		return nil
	})
	m.handles.Delete(handleKey{id: string(k.ID), class: pkcs11.CKO_SECRET_KEY})
	m.handles.Delete(handleKey{id: string(k.ID), class: pkcs11.CKO_PRIVATE_KEY})
	m.handles.Delete(handleKey{id: string(k.ID), class: pkcs11.CKO_PUBLIC_KEY})
	m.pubMu.Lock()
	delete(m.pubs, string(k.ID))
	m.pubMu.Unlock()
	return mapErr("destroy key", err)
}

// PublicKey returns the public half of an asymmetric key as a Go value
// (*ecdsa.PublicKey, ed25519.PublicKey or *rsa.PublicKey), cached after the
// first read.
func (m *Module) PublicKey(ctx context.Context, k Key) (crypto.PublicKey, error) {
	if !k.Kind.Asymmetric() {
		return nil, fmt.Errorf("%w: %s keys have no public key", ErrInvalidInput, k.Kind)
	}
	m.pubMu.RLock()
	pub, ok := m.pubs[string(k.ID)]
	m.pubMu.RUnlock()
	if ok {
		return pub, nil
	}
	err := m.withSession(ctx, "public_key", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.handle(p, sh, k, pkcs11.CKO_PUBLIC_KEY)
		if err != nil {
			return err
		}
		pub, err = readPublic(p, sh, h, k.Kind)
		return err
	})
	if err != nil {
		return nil, mapErr("read public key", err)
	}
	m.pubMu.Lock()
	m.pubs[string(k.ID)] = pub
	m.pubMu.Unlock()
	return pub, nil
}

func readPublic(p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, kind Kind) (crypto.PublicKey, error) {
	switch kind {
	case KindRSA3072PSS:
		got, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
		})
		if err != nil {
			return nil, err
		}
		e := new(big.Int).SetBytes(got[1].Value)
		if !e.IsInt64() || e.Int64() > 1<<31 {
			return nil, fmt.Errorf("%w: rsa public exponent out of range", ErrInvalidInput)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(got[0].Value), E: int(e.Int64())}, nil
	case KindECDSAP256, KindECDSAP384, KindAuditP256, KindEd25519:
		got, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil {
			return nil, err
		}
		var point []byte
		if rest, err := asn1.Unmarshal(got[0].Value, &point); err != nil || len(rest) != 0 {
			point = got[0].Value // some tokens return the raw point
		}
		if kind == KindEd25519 {
			if len(point) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("%w: ed25519 point has %d bytes", ErrInvalidInput, len(point))
			}
			return ed25519.PublicKey(point), nil
		}
		curve := elliptic.P256()
		if kind == KindECDSAP384 {
			curve = elliptic.P384()
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return nil, fmt.Errorf("%w: ec point: %v", ErrInvalidInput, err)
		}
		return pub, nil
	}
	return nil, fmt.Errorf("%w: kind %s", ErrInvalidInput, kind)
}
