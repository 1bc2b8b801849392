package hsm

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Sealed data keys: a data key that never becomes a key object in the token.
//
// GenerateDataKey and UnwrapDataKey make the data key a (session) key object
// for the length of one call. Some modules never free a destroyed session
// object (SoftHSM 2.6.1 keeps ~260 bytes of every one for the life of the
// process), so those paths grow the process without bound. When the caller
// is to receive the data key in plaintext anyway, nothing requires the token
// to hold it as an object: it is drawn from the token's RNG and encrypted
// under the master key with AES-GCM, and opened again by one GCM decryption.
// These two functions create no object at all.

// GenerateSealedDataKey draws a DataKeySize-byte data key from the token's
// RNG (C_GenerateRandom) and encrypts it with AES-256-GCM under master inside
// the token, with a fresh 96-bit IV (the token's own where it writes one) and aad authenticated, in one
// session and without creating any object. It returns the data key, the IV
// and the ciphertext with its 128-bit tag appended (DataKeySize+TagSize
// bytes). The caller owns the data key and should clear it after use.
func (m *Module) GenerateSealedDataKey(ctx context.Context, master Key, aad []byte) (dataKey, iv, sealed []byte, err error) {
	if err := requireKind(master, KindAES256); err != nil {
		return nil, nil, nil, err
	}
	if len(aad) > MaxDataSize {
		return nil, nil, nil, fmt.Errorf("%w: aad larger than %d bytes", ErrInvalidInput, MaxDataSize)
	}
	c := m.capsNow()
	if !c.GCM.OK {
		return nil, nil, nil, c.GCM.unsupported("generating a sealed data key")
	}
	iv = make([]byte, IVSize)
	if !c.gcmTokenIV {
		if _, err := rand.Read(iv); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: random: %v", ErrUnavailable, err)
		}
	}
	err = m.withSession(ctx, "generate_sealed_data_key", func(p *pkcs11.Ctx, sh pkcs11.SessionHandle) error {
		h, err := m.handle(p, sh, master, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		if dataKey, err = p.GenerateRandom(sh, DataKeySize); err != nil {
			return err
		}
		sealed, iv, err = m.gcmSeal(p, sh, c, h, iv, dataKey, aad)
		return err
	})
	if err != nil {
		clear(dataKey)
		return nil, nil, nil, mapErr("generate sealed data key", err)
	}
	if len(dataKey) != DataKeySize || len(sealed) != DataKeySize+TagSize {
		clear(dataKey)
		return nil, nil, nil, fmt.Errorf("%w: token returned %d random and %d sealed bytes", ErrMechanism, len(dataKey), len(sealed))
	}
	return dataKey, iv, sealed, nil
}

// OpenSealedDataKey decrypts a data key sealed by GenerateSealedDataKey (one
// AES-GCM decryption inside the token, no object created). A wrong key, IV,
// AAD or a tampered input is ErrDecrypt, as for Decrypt.
func (m *Module) OpenSealedDataKey(ctx context.Context, master Key, iv, sealed, aad []byte) ([]byte, error) {
	if len(sealed) != DataKeySize+TagSize {
		return nil, fmt.Errorf("%w: sealed data key is %d bytes, want %d", ErrDecrypt, len(sealed), DataKeySize+TagSize)
	}
	dk, err := m.Decrypt(ctx, master, iv, sealed, aad)
	if err != nil {
		return nil, err
	}
	if len(dk) != DataKeySize {
		clear(dk)
		return nil, fmt.Errorf("%w: token returned %d bytes for a sealed data key", ErrMechanism, len(dk))
	}
	return dk, nil
}
