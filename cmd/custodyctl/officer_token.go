package main

import (
	"crypto/ecdh"
	"encoding/asn1"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/custodyhq/custody/internal/pkcs11uri"
	"github.com/miekg/pkcs11"
	"google.golang.org/grpc/codes"
)

// tokenShareKey is an officer's share key on their own PKCS#11 token: a
// P-256 key pair whose private half has CKA_DERIVE and never leaves the
// token. ECDH runs there (CKM_ECDH1_DERIVE with CKD_NULL); the shared
// secret comes back as a session object's value and is destroyed at once.
// It is the one place custodyctl calls PKCS#11 directly: crypto11 (used
// for officers' signing keys) has no key agreement.
//
// If crypto11 already initialised the library in this process (a token
// signing key), Close leaves it initialised: crypto11's own Close
// finalises it.
type tokenShareKey struct {
	p        *pkcs11.Ctx
	sh       pkcs11.SessionHandle
	priv     pkcs11.ObjectHandle
	pub      *ecdh.PublicKey
	finalize bool
}

func openTokenShareKey(uri, pinEnv string) (_ *tokenShareKey, err error) {
	sel, err := parseOfficerURI(uri)
	if err != nil {
		return nil, usageErrorf("--share-pkcs11: %v", err)
	}
	if pinEnv == "" {
		return nil, usageErrorf("--share-pkcs11 needs --officer-pin-env VAR naming the variable that holds the PIN")
	}
	pin, ok := os.LookupEnv(pinEnv)
	if !ok || pin == "" {
		return nil, usageErrorf("environment variable %s (the token PIN) is not set", pinEnv)
	}
	p := pkcs11.New(sel.ModulePath)
	if p == nil {
		return nil, localError(codes.Unavailable, fmt.Errorf("open share key token: cannot load %s", sel.ModulePath))
	}
	k := &tokenShareKey{p: p, finalize: true}
	if err := p.Initialize(); err != nil {
		if code, ok := errors.AsType[pkcs11.Error](err); !ok || code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			p.Destroy()
			return nil, localError(codes.Unavailable, fmt.Errorf("open share key token: %v", err))
		}
		k.finalize = false
	}
	defer func() {
		if err != nil {
			_ = k.Close()
		}
	}()
	slot, err := findTokenSlot(p, sel)
	if err != nil {
		return nil, err
	}
	if k.sh, err = p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
		return nil, localError(codes.Unavailable, fmt.Errorf("open share key token: %v", err))
	}
	if err := p.Login(k.sh, pkcs11.CKU_USER, pin); err != nil {
		if code, ok := errors.AsType[pkcs11.Error](err); !ok || code != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
			// The message names the PKCS#11 code, never the PIN.
			return nil, localError(codes.PermissionDenied, fmt.Errorf("log in to the share key token: %v", err))
		}
	}
	find := func(class uint) ([]pkcs11.ObjectHandle, error) {
		tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC)}
		if sel.Object != "" {
			tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, sel.Object))
		}
		if sel.ID != nil {
			tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, sel.ID))
		}
		if err := p.FindObjectsInit(k.sh, tmpl); err != nil {
			return nil, err
		}
		hs, _, err := p.FindObjects(k.sh, 2)
		if ferr := p.FindObjectsFinal(k.sh); err == nil {
			err = ferr
		}
		return hs, err
	}
	privs, err := find(pkcs11.CKO_PRIVATE_KEY)
	if err == nil && len(privs) != 1 {
		err = fmt.Errorf("%d EC private keys match %s; the uri must select exactly one", len(privs), selectorText(sel))
	}
	if err != nil {
		return nil, localError(codes.NotFound, fmt.Errorf("share key on token: %w", err))
	}
	k.priv = privs[0]
	pubs, err := find(pkcs11.CKO_PUBLIC_KEY)
	if err == nil && len(pubs) != 1 {
		err = fmt.Errorf("%d EC public keys match %s; the uri must select exactly one", len(pubs), selectorText(sel))
	}
	if err != nil {
		return nil, localError(codes.NotFound, fmt.Errorf("share key on token: %w", err))
	}
	attrs, err := p.GetAttributeValue(k.sh, pubs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, localError(codes.NotFound, fmt.Errorf("share key on token: read its public key: %v", err))
	}
	point := attrs[0].Value
	var inner []byte
	if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 {
		point = inner // CKA_EC_POINT is a DER OCTET STRING on most tokens
	}
	if k.pub, err = ecdh.P256().NewPublicKey(point); err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("share key on token: not a P-256 key: %v", err))
	}
	return k, nil
}

func findTokenSlot(p *pkcs11.Ctx, sel pkcs11uri.URI) (uint, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, localError(codes.Unavailable, fmt.Errorf("list token slots: %v", err))
	}
	for _, s := range slots {
		if sel.SlotID != nil && *sel.SlotID != s {
			continue
		}
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if sel.Token != "" && strings.TrimRight(ti.Label, " \x00") != sel.Token {
			continue
		}
		if sel.Serial != "" && strings.TrimRight(ti.SerialNumber, " \x00") != sel.Serial {
			continue
		}
		return s, nil
	}
	return 0, localError(codes.NotFound, fmt.Errorf("share key token not found in %s", sel.ModulePath))
}

// PublicKey implements ecdh.KeyExchanger.
func (k *tokenShareKey) PublicKey() *ecdh.PublicKey { return k.pub }

// Curve implements ecdh.KeyExchanger.
func (k *tokenShareKey) Curve() ecdh.Curve { return ecdh.P256() }

// ECDH implements ecdh.KeyExchanger: the token computes the shared secret.
func (k *tokenShareKey) ECDH(peer *ecdh.PublicKey) ([]byte, error) {
	if peer.Curve() != ecdh.P256() {
		return nil, errors.New("share key: peer is not P-256")
	}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),      // a session object, destroyed below
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),  // its value is the shared secret HPKE needs
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), // readable, once
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
	}
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE,
		pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer.Bytes()))}
	h, err := k.p.DeriveKey(k.sh, mech, k.priv, tmpl)
	if err != nil {
		return nil, fmt.Errorf("share key: ECDH on the token: %w", err)
	}
	defer k.p.DestroyObject(k.sh, h)
	attrs, err := k.p.GetAttributeValue(k.sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil {
		return nil, fmt.Errorf("share key: read the shared secret: %w", err)
	}
	if len(attrs[0].Value) != 32 {
		return nil, fmt.Errorf("share key: shared secret of %d bytes", len(attrs[0].Value))
	}
	return attrs[0].Value, nil
}

// Close ends the session (never logging out: login state is shared by the
// process) and finalises the library if this key initialised it.
func (k *tokenShareKey) Close() error {
	if k.p == nil {
		return nil
	}
	if k.sh != 0 {
		_ = k.p.CloseSession(k.sh)
	}
	if k.finalize {
		_ = k.p.Finalize()
	}
	k.p.Destroy()
	k.p = nil
	return nil
}
