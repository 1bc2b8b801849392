package server

// Sealed data keys (envelope format 0x03, docs/envelope.md): the data-key
// path that creates no HSM key object, used whenever the data key leaves in
// plaintext anyway.
//
// Invariants:
//   - A sealed data key is only ever generated for a caller whose grant
//     returns it in plaintext; every other GenerateDataKey stays on the
//     AES-KWP path inside the HSM (format 0x02), so a data key generated for
//     key transport or without plaintext never exists in custodyd's memory.
//   - Opening a sealed key decrypts it in custodyd's memory, so it is done
//     only for a caller whose grant allows plaintext: to return it, to
//     encrypt it to a recipient, to seal it again under another version
//     (Rewrap), or to check it before storing it (StoreDataKey). Anyone else
//     is refused (errSealedNeedsPlaintext) before anything is decrypted.

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/keys"
)

// errSealedNeedsPlaintext: a sealed data key would have to be decrypted in
// custodyd's memory for a caller whose grant does not allow plaintext. The
// token cannot do it inside itself (SoftHSM offers no AES-GCM C_UnwrapKey).
var errSealedNeedsPlaintext = fmt.Errorf("%w: this data key is a sealed key (envelope format 0x03); it opens to a recipient, rewraps or stores only under a grant that allows plaintext (keys for transport-only relays are generated with without_plaintext or a recipient)", keys.ErrFailedPrecondition)

// sealDataKey makes a sealed data key under version (hk) of e, bound to
// encCtx, and returns its envelope and the data key.
func (s *Server) sealDataKey(ctx context.Context, e *keys.Entry, hk hsm.Key, version uint32, encCtx map[string]string) (envelope, dataKey []byte, err error) {
	aad, err := keys.SealedKeyAAD(e.Key.ID, version, encCtx)
	if err != nil {
		return nil, nil, err
	}
	dk, iv, sealed, err := s.hsm.GenerateSealedDataKey(ctx, hk, aad)
	if err != nil {
		return nil, nil, err
	}
	env, err := keys.NewSealedKey(e.Key.ID, version, iv, sealed)
	if err == nil {
		envelope, err = env.Marshal()
	}
	if err != nil {
		clear(dk)
		return nil, nil, err
	}
	return envelope, dk, nil
}

// openSealed decrypts a sealed data key (checked by openWrapped to belong to
// hk's version) under encCtx, for a caller whose grant allows plaintext.
func (s *Server) openSealed(ctx context.Context, hk hsm.Key, env *keys.Envelope, encCtx map[string]string, allowPlaintext bool) ([]byte, error) {
	if !allowPlaintext {
		return nil, errSealedNeedsPlaintext
	}
	aad, err := env.AAD(encCtx)
	if err != nil {
		return nil, err
	}
	return s.hsm.OpenSealedDataKey(ctx, hk, env.IV, env.Sealed(), aad)
}

// deliverSealed hands out a sealed data key as deliveryTo decided: in
// plaintext (rk nil), or encrypted to rk with RSA-OAEP-SHA256, which is what
// the HSM would produce, done here because the key is already in memory.
func (s *Server) deliverSealed(ctx context.Context, hk hsm.Key, env *keys.Envelope, encCtx map[string]string, rk *rsa.PublicKey, allowPlaintext bool) (plaintext, forRecipient []byte, wrapping string, err error) {
	dk, err := s.openSealed(ctx, hk, env, encCtx, allowPlaintext)
	if err != nil {
		return nil, nil, "", err
	}
	if rk == nil {
		return dk, nil, "", nil
	}
	defer clear(dk)
	out, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rk, dk, nil)
	if err != nil {
		return nil, nil, "", fmt.Errorf("%w: cannot encrypt to this recipient key", ErrInvalidArgument)
	}
	return nil, out, hsm.OAEP{Hash: crypto.SHA256}.String(), nil
}

// resealDataKey opens a sealed data key under its version and seals it
// again under version to (Rewrap of format 0x03).
func (s *Server) resealDataKey(ctx context.Context, e *keys.Entry, from hsm.Key, env *keys.Envelope, to hsm.Key, version uint32, encCtx map[string]string, allowPlaintext bool) ([]byte, error) {
	dk, err := s.openSealed(ctx, from, env, encCtx, allowPlaintext)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	aad, err := keys.SealedKeyAAD(e.Key.ID, version, encCtx)
	if err != nil {
		return nil, err
	}
	iv, sealed, err := s.hsm.Encrypt(ctx, to, dk, aad)
	if err != nil {
		return nil, err
	}
	out, err := keys.NewSealedKey(e.Key.ID, version, iv, sealed)
	if err != nil {
		return nil, err
	}
	return out.Marshal()
}
