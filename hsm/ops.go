package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/miekg/pkcs11"
)

// Sizes enforced here rather than trusted to the token: SoftHSM accepts any
// GCM IV length (even 0) and a 0-bit tag.
const (
	IVSize      = 12 // 96-bit GCM IV, random per encryption
	TagSize     = 16 // 128-bit GCM tag
	DataKeySize = 32 // AES-256 data keys
	// MaxDataSize bounds one HSM encrypt/decrypt/sign/mac input.
	MaxDataSize = 1 << 20
)

var errTagMismatch = errors.New("authentication tag mismatch")

// wrapRoom is the output buffer for wrapping a data key: RFC 5649 makes 40
// bytes of 32, other paddings (checked and refused) up to 56.
const wrapRoom = DataKeySize + 24

func requireKind(k Key, kinds ...Kind) error {
	for _, want := range kinds {
		if k.Kind == want {
			return nil
		}
	}
	return fmt.Errorf("%w: %s key cannot be used for this operation", ErrInvalidInput, k.Kind)
}

// caps returns the capabilities of the current generation.
func (m *Module) capsNow() *Capabilities { return m.caps.Load() }

// gcmInput bounds one AES-GCM input by Custody's own limit and the
// profile's.
func (m *Module) gcmInput() int {
	if n := m.profile.MaxGCMInput; n > 0 && n < MaxDataSize {
		return n
	}
	return MaxDataSize
}

// Encrypt seals plaintext with AES-256-GCM under k inside the token, with a
// fresh random 96-bit IV and aad authenticated. It returns the IV and the
// ciphertext with its 128-bit tag appended. An empty plaintext yields just a
// tag over aad (a GMAC). On a token that generates IVs itself (the probe
// found it so), the IV is the token's, read back from the parameters.
func (m *Module) Encrypt(ctx context.Context, k Key, plaintext, aad []byte) (iv, ciphertext []byte, err error) {
	if err := requireKind(k, KindAES256); err != nil {
		return nil, nil, err
	}
	if max := m.gcmInput(); len(plaintext) > max || len(aad) > MaxDataSize {
		return nil, nil, fmt.Errorf("%w: input larger than %d bytes", ErrInvalidInput, max)
	}
	c := m.capsNow()
	if !c.GCM.OK {
		return nil, nil, c.GCM.unsupported("encrypt")
	}
	iv = make([]byte, IVSize)
	if !c.gcmTokenIV {
		if _, err := rand.Read(iv); err != nil {
			return nil, nil, fmt.Errorf("%w: random: %v", ErrUnavailable, err)
		}
	}
	err = m.withSession(ctx, "encrypt", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.handle(p, sh, k, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		ciphertext, iv, err = m.gcmSeal(p, sh, c, h, iv, plaintext, aad)
		return err
	})
	if err != nil {
		return nil, nil, mapErr("encrypt", err)
	}
	return iv, ciphertext, nil
}

// gcmSeal encrypts plaintext with AES-GCM under key h in session sh, with
// iv (ignored when the token writes its own: c.gcmTokenIV), and returns
// the ciphertext with its tag and the IV used. A token that returns the
// wrong length or no IV is ErrMechanism.
func (m *Module) gcmSeal(p *pkcs11.Ctx, sh pkcs11.SessionHandle, c *Capabilities, h pkcs11.ObjectHandle, iv, plaintext, aad []byte) ([]byte, []byte, error) {
	params := pkcs11.NewGCMParams(iv, aad, TagSize*8)
	defer params.Free()
	if err := p.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
		return nil, nil, err
	}
	ciphertext, err := m.raw.encrypt(sh, plaintext, len(plaintext)+TagSize)
	if err != nil {
		return nil, nil, err
	}
	if c.gcmTokenIV {
		iv = params.IV()
	}
	if len(ciphertext) != len(plaintext)+TagSize {
		return nil, nil, fmt.Errorf("%w: token returned %d bytes for %d", ErrMechanism, len(ciphertext), len(plaintext))
	}
	if len(iv) != IVSize || bytes.Equal(iv, make([]byte, IVSize)) {
		// A token that stopped writing its IV back must not leave us with a
		// fixed (all-zero) IV: refuse rather than reuse it.
		return nil, nil, fmt.Errorf("%w: token wrote no %d-byte GCM IV back", ErrMechanism, IVSize)
	}
	return ciphertext, iv, nil
}

// Decrypt opens a ciphertext made by Encrypt. A wrong key, IV, AAD, tag or a
// truncated input is ErrDecrypt; it never panics.
func (m *Module) Decrypt(ctx context.Context, k Key, iv, ciphertext, aad []byte) ([]byte, error) {
	if err := requireKind(k, KindAES256); err != nil {
		return nil, err
	}
	if len(iv) != IVSize {
		return nil, fmt.Errorf("%w: iv must be %d bytes", ErrDecrypt, IVSize)
	}
	if len(ciphertext) < TagSize || len(ciphertext) > m.gcmInput()+TagSize || len(aad) > MaxDataSize {
		return nil, fmt.Errorf("%w: ciphertext length %d out of range", ErrDecrypt, len(ciphertext))
	}
	c := m.capsNow()
	if !c.GCM.OK {
		return nil, c.GCM.unsupported("decrypt")
	}
	var pt []byte
	err := m.withSession(ctx, "decrypt", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.handle(p, sh, k, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		params := pkcs11.NewGCMParams(iv, aad, TagSize*8)
		defer params.Free()
		if err := p.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
			return err
		}
		pt, err = m.raw.decrypt(sh, ciphertext, len(ciphertext))
		if err != nil {
			return m.disambiguate(p, sh, h, err)
		}
		return nil
	})
	if err != nil {
		return nil, mapErr("decrypt", err)
	}
	return pt, nil
}

// disambiguate turns a GCM or unwrap failure into errTagMismatch when the
// token uses its code for bad input (the probe saw it for a bad tag or a
// tampered wrapped key, or the profile says so: SoftHSM reports a bad tag
// as CKR_GENERAL_ERROR, the code of a device fault) and the session and key
// are demonstrably fine; a fault would also break these probes.
func (m *Module) disambiguate(p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, err error) error {
	return m.callerFault(p, sh, h, err, ErrDecrypt, errTagMismatch.Error())
}

// callerFault turns a failure whose code this token also uses for a
// caller's bad input (seen by the probe, or listed by the profile) into the
// caller's fault (sentinel) when the session, the object h and the token
// demonstrably still work, so that bad input can neither close sessions nor
// start a recovery. Otherwise err is returned unchanged: codes that are
// device faults on this token stay device faults.
func (m *Module) callerFault(p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, err, sentinel error, why string) error {
	code, ok := rv(err)
	if !ok || !(m.capsNow().badInputCode(code) || m.profile.ambiguous(code)) {
		return err
	}
	if classify(err) == classCaller {
		return err // already the caller's: mapErr names it
	}
	if _, perr := p.GetSessionInfo(sh); perr != nil {
		return err
	}
	if _, perr := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)}); perr != nil {
		return err
	}
	if !m.tokenAlive() {
		return err
	}
	return fmt.Errorf("%w: %s", sentinel, why)
}

// wrapMaster wraps dk under the master key mh with the token's RFC 5649
// mechanism.
func (m *Module) wrapMaster(sh pkcs11.SessionHandle, c *Capabilities, mh, dk pkcs11.ObjectHandle) ([]byte, error) {
	out, err := m.raw.wrap(sh, c.Wrap.Mechanism.Code, mh, dk, wrapRoom)
	if err == nil && len(out) != DataKeySize+8 {
		err = fmt.Errorf("%w: token wrapped a data key into %d bytes, want %d (RFC 5649)", ErrMechanism, len(out), DataKeySize+8)
	}
	return out, err
}

// GenerateDataKey makes a fresh AES-256 data key inside the token and returns
// it wrapped under master with AES-KWP (RFC 5649). Only when withPlaintext is
// true is the key's value also returned; otherwise it never leaves the token
// unwrapped.
func (m *Module) GenerateDataKey(ctx context.Context, master Key, withPlaintext bool) (wrapped, plaintext []byte, err error) {
	if err := requireKind(master, KindAES256); err != nil {
		return nil, nil, err
	}
	c := m.capsNow()
	if !c.Wrap.OK {
		return nil, nil, c.Wrap.unsupported("generating a data key")
	}
	err = m.withSession(ctx, "generate_data_key", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		mh, err := m.handle(p, sh, master, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		dk, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, m.dataKeyTemplate(!withPlaintext))
		if err != nil {
			return err
		}
		m.sessionObjectCreated()
		defer p.DestroyObject(sh, dk)
		if wrapped, err = m.wrapMaster(sh, c, mh, dk); err != nil {
			return err
		}
		if withPlaintext {
			plaintext, err = readValue(p, sh, dk)
		}
		return err
	})
	if err != nil {
		return nil, nil, mapErr("generate data key", err)
	}
	return wrapped, plaintext, nil
}

func readValue(p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle) ([]byte, error) {
	got, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil {
		return nil, err
	}
	if len(got[0].Value) != DataKeySize {
		return nil, fmt.Errorf("%w: data key has %d bytes", ErrMechanism, len(got[0].Value))
	}
	return got[0].Value, nil
}

// unwrapInto unwraps wrapped under master into a transient session object
// and calls fn with it; the object is destroyed on every path.
func (m *Module) unwrapInto(ctx context.Context, master Key, wrapped []byte, sensitive bool, fn func(p *pkcs11.Ctx, sh pkcs11.SessionHandle, dk pkcs11.ObjectHandle) error) error {
	if err := requireKind(master, KindAES256); err != nil {
		return err
	}
	if len(wrapped) < 16 || len(wrapped) > 1024 || len(wrapped)%8 != 0 {
		return fmt.Errorf("%w: wrapped key length %d invalid", ErrDecrypt, len(wrapped))
	}
	c := m.capsNow()
	if !c.Wrap.OK {
		return c.Wrap.unsupported("unwrapping a data key")
	}
	err := m.withSession(ctx, "unwrap", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		mh, err := m.handle(p, sh, master, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(c.Wrap.Mechanism.Code, nil)}
		dk, err := p.UnwrapKey(sh, mech, mh, wrapped, m.unwrapTemplate(sensitive))
		if err != nil {
			return m.disambiguate(p, sh, mh, err)
		}
		m.sessionObjectCreated()
		defer p.DestroyObject(sh, dk)
		return fn(p, sh, dk)
	})
	return mapErr("unwrap data key", err)
}

// UnwrapDataKey returns the plaintext of a data key wrapped by GenerateDataKey.
func (m *Module) UnwrapDataKey(ctx context.Context, master Key, wrapped []byte) ([]byte, error) {
	var pt []byte
	err := m.unwrapInto(ctx, master, wrapped, false, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle, dk pkcs11.ObjectHandle) error {
		var err error
		pt, err = readValue(p, sh, dk)
		return err
	})
	return pt, err
}

// RewrapDataKey unwraps a data key under from and wraps it under to, inside
// the token; the plaintext never leaves it.
func (m *Module) RewrapDataKey(ctx context.Context, from, to Key, wrapped []byte) ([]byte, error) {
	if err := requireKind(to, KindAES256); err != nil {
		return nil, err
	}
	var out []byte
	err := m.unwrapInto(ctx, from, wrapped, true, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle, dk pkcs11.ObjectHandle) error {
		th, err := m.handle(p, sh, to, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		out, err = m.wrapMaster(sh, m.capsNow(), th, dk)
		return err
	})
	return out, err
}

// OAEP is the RSA-OAEP variant used to wrap a key to a recipient.
type OAEP struct {
	Hash crypto.Hash // what the module's probe chose: SHA256 where the token supports it, else SHA1
}

func (o OAEP) String() string { return oaepName(o.Hash) }

// MinRecipientBits is the smallest recipient RSA modulus accepted.
const MinRecipientBits = 3072

// oaepParams are the PKCS#11 hash and MGF of an OAEP hash.
func oaepParams(h crypto.Hash) (hash, mgf uint) {
	if h == crypto.SHA256 {
		return pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256
	}
	return pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1
}

// wrapToRecipient imports the recipient's public key as a wrap-only session
// object, wraps dk to it with RSA-OAEP under the hash this module's probe
// chose (never decided by a caller's key), and destroys the imported object.
func (m *Module) wrapToRecipient(p *pkcs11.Ctx, sh pkcs11.SessionHandle, c *Capabilities, dk pkcs11.ObjectHandle, pub *rsa.PublicKey) ([]byte, OAEP, error) {
	m.sessionObjectCreated() // the imported recipient key (counted even if the import fails)
	rh, err := p.CreateObject(sh, m.profile.filter(pkcs11.CKO_PUBLIC_KEY, recipientTemplate(pub.N.Bytes(), big.NewInt(int64(pub.E)).Bytes())))
	if err != nil {
		return nil, OAEP{}, m.callerFault(p, sh, dk, err, ErrInvalidInput, "the token refused this recipient key")
	}
	defer p.DestroyObject(sh, rh)
	hash, mgf := oaepParams(c.oaepHash)
	out, err := m.raw.wrapOAEP(sh, hash, mgf, rh, dk, (pub.N.BitLen()+7)/8)
	if err != nil {
		return nil, OAEP{}, m.callerFault(p, sh, dk, err, ErrInvalidInput, "the token refused to wrap to this recipient key")
	}
	return out, OAEP{Hash: c.oaepHash}, nil
}

func checkRecipient(pub *rsa.PublicKey) error {
	if pub == nil || pub.N == nil || pub.N.BitLen() < MinRecipientBits || pub.E < 3 || pub.E%2 == 0 {
		return fmt.Errorf("%w: recipient must be an RSA public key of at least %d bits", ErrInvalidInput, MinRecipientBits)
	}
	return nil
}

// GenerateDataKeyFor makes a data key inside the token and returns it wrapped
// under master (AES-KWP) and wrapped to recipient (RSA-OAEP). The plaintext
// data key never leaves the token.
func (m *Module) GenerateDataKeyFor(ctx context.Context, master Key, recipient *rsa.PublicKey) (wrapped, forRecipient []byte, how OAEP, err error) {
	if err := requireKind(master, KindAES256); err != nil {
		return nil, nil, OAEP{}, err
	}
	if err := checkRecipient(recipient); err != nil {
		return nil, nil, OAEP{}, err
	}
	c := m.capsNow()
	if !c.Wrap.OK {
		return nil, nil, OAEP{}, c.Wrap.unsupported("generating a data key")
	}
	if !c.OAEP.OK {
		return nil, nil, OAEP{}, c.OAEP.unsupported("wrapping a data key to a recipient")
	}
	err = m.withSession(ctx, "generate_data_key_for", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		mh, err := m.handle(p, sh, master, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		dk, err := p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, m.dataKeyTemplate(true))
		if err != nil {
			return err
		}
		m.sessionObjectCreated()
		defer p.DestroyObject(sh, dk)
		if wrapped, err = m.wrapMaster(sh, c, mh, dk); err != nil {
			return err
		}
		forRecipient, how, err = m.wrapToRecipient(p, sh, c, dk, recipient)
		return err
	})
	if err != nil {
		return nil, nil, OAEP{}, mapErr("generate data key for recipient", err)
	}
	return wrapped, forRecipient, how, nil
}

// UnwrapDataKeyFor unwraps a data key under master and wraps it to recipient,
// inside the token: the plaintext never leaves it.
func (m *Module) UnwrapDataKeyFor(ctx context.Context, master Key, wrapped []byte, recipient *rsa.PublicKey) ([]byte, OAEP, error) {
	if err := checkRecipient(recipient); err != nil {
		return nil, OAEP{}, err
	}
	c := m.capsNow()
	if !c.OAEP.OK {
		return nil, OAEP{}, c.OAEP.unsupported("wrapping a data key to a recipient")
	}
	var out []byte
	var how OAEP
	err := m.unwrapInto(ctx, master, wrapped, true, func(p *pkcs11.Ctx, sh pkcs11.SessionHandle, dk pkcs11.ObjectHandle) error {
		var err error
		out, how, err = m.wrapToRecipient(p, sh, c, dk, recipient)
		return err
	})
	return out, how, err
}

// Sign signs with an asymmetric key. For ECDSA and RSA-PSS, input is a
// digest (SHA-256 for P-256 and RSA, SHA-384 for P-384; hashing happens
// outside the token) and ECDSA signatures are ASN.1 DER. For Ed25519, input
// is the message itself.
func (m *Module) Sign(ctx context.Context, k Key, input []byte) ([]byte, error) {
	var mech []*pkcs11.Mechanism
	switch k.Kind {
	case KindECDSAP256, KindAuditP256, KindECDSAP384:
		if n := len(input); n != 32 && n != 48 && n != 64 {
			return nil, fmt.Errorf("%w: ecdsa signs a 32, 48 or 64-byte digest, got %d bytes", ErrInvalidInput, n)
		}
		mech = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
	case KindEd25519:
		if len(input) > MaxDataSize {
			return nil, fmt.Errorf("%w: message larger than %d bytes", ErrInvalidInput, MaxDataSize)
		}
		mech = []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}
	case KindRSA3072PSS:
		if len(input) != sha256.Size {
			return nil, fmt.Errorf("%w: rsa-pss signs a 32-byte SHA-256 digest, got %d bytes", ErrInvalidInput, len(input))
		}
		mech = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS,
			pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, sha256.Size))}
	default:
		return nil, fmt.Errorf("%w: %s keys do not sign", ErrInvalidInput, k.Kind)
	}
	if !m.has(mech[0].Mechanism) {
		return nil, fmt.Errorf("%w: signing with %s keys needs %s, which the token lacks", ErrUnsupported, k.Kind, mechName(mech[0].Mechanism))
	}
	var sig []byte
	err := m.withSession(ctx, "sign", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.handle(p, sh, k, pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		if err := p.SignInit(sh, mech, h); err != nil {
			return err
		}
		sig, err = p.Sign(sh, input)
		return err
	})
	if err != nil {
		return nil, mapErr("sign", err)
	}
	if k.Kind == KindECDSAP256 || k.Kind == KindECDSAP384 || k.Kind == KindAuditP256 {
		return ecdsaDER(sig)
	}
	return sig, nil
}

func ecdsaDER(raw []byte) ([]byte, error) {
	if len(raw) == 0 || len(raw)%2 != 0 {
		return nil, fmt.Errorf("%w: ecdsa signature of %d bytes", ErrMechanism, len(raw))
	}
	half := len(raw) / 2
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:half]), new(big.Int).SetBytes(raw[half:])})
}

// Verify checks a signature made by Sign with the key's public half, in Go.
func (m *Module) Verify(ctx context.Context, k Key, input, sig []byte) (bool, error) {
	pub, err := m.PublicKey(ctx, k)
	if err != nil {
		return false, err
	}
	switch pk := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(pk, input, sig), nil
	case ed25519.PublicKey:
		return ed25519.Verify(pk, input, sig), nil
	case *rsa.PublicKey:
		if len(input) != sha256.Size {
			return false, fmt.Errorf("%w: rsa-pss verifies a 32-byte SHA-256 digest", ErrInvalidInput)
		}
		return rsa.VerifyPSS(pk, crypto.SHA256, input, sig, &rsa.PSSOptions{SaltLength: sha256.Size}) == nil, nil
	}
	return false, fmt.Errorf("%w: %s keys do not verify", ErrInvalidInput, k.Kind)
}

// MAC computes HMAC-SHA256 of data under k inside the token.
func (m *Module) MAC(ctx context.Context, k Key, data []byte) ([]byte, error) {
	if err := requireKind(k, KindHMACSHA256); err != nil {
		return nil, err
	}
	if len(data) > MaxDataSize {
		return nil, fmt.Errorf("%w: input larger than %d bytes", ErrInvalidInput, MaxDataSize)
	}
	if c := m.capsNow(); !c.HMAC.OK {
		return nil, c.HMAC.unsupported("mac")
	}
	var mac []byte
	err := m.withSession(ctx, "mac", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.handle(p, sh, k, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		if err := p.SignInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, h); err != nil {
			return err
		}
		mac, err = p.Sign(sh, data)
		return err
	})
	return mac, mapErr("mac", err)
}

// VerifyMAC recomputes the HMAC inside the token and compares in constant time.
func (m *Module) VerifyMAC(ctx context.Context, k Key, data, mac []byte) (bool, error) {
	want, err := m.MAC(ctx, k, data)
	if err != nil {
		return false, err
	}
	return hmac.Equal(want, mac), nil
}

// Random returns n bytes from the token's RNG.
func (m *Module) Random(ctx context.Context, n int) ([]byte, error) {
	if n <= 0 || n > 1024 {
		return nil, fmt.Errorf("%w: random length must be 1..1024", ErrInvalidInput)
	}
	var out []byte
	err := m.withSession(ctx, "random", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		var err error
		out, err = p.GenerateRandom(sh, n)
		return err
	})
	return out, mapErr("random", err)
}

// Signer returns a crypto.Signer over an asymmetric key in custody (for
// example the audit key). Its Sign ignores rand: the token has its own.
func (m *Module) Signer(ctx context.Context, k Key) (crypto.Signer, error) {
	pub, err := m.PublicKey(ctx, k)
	if err != nil {
		return nil, err
	}
	return &signer{m: m, k: k, pub: pub}, nil
}

type signer struct {
	m   *Module
	k   Key
	pub crypto.PublicKey
}

func (s *signer) Public() crypto.PublicKey { return s.pub }

func (s *signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	switch s.k.Kind {
	case KindEd25519:
		if opts != nil && opts.HashFunc() != 0 {
			return nil, fmt.Errorf("%w: ed25519 signs messages, not digests", ErrInvalidInput)
		}
	case KindRSA3072PSS:
		if pss, ok := opts.(*rsa.PSSOptions); !ok || pss.Hash != crypto.SHA256 || (pss.SaltLength != sha256.Size && pss.SaltLength != rsa.PSSSaltLengthEqualsHash) {
			return nil, fmt.Errorf("%w: rsa key signs PSS/SHA-256 with a 32-byte salt only", ErrInvalidInput)
		}
	}
	return s.m.Sign(context.Background(), s.k, digest)
}
