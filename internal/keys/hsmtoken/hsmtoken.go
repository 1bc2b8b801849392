// Package hsmtoken is the key registry's Token over package hsm: it maps a
// key purpose to the HSM key kind that implements it and a registry Object
// to the hsm.Key the HSM operations take.
//
// Invariant: every key it creates comes from hsm's one enforced template for
// its kind, with its custody attributes read back (hsm.CreateKey does both).
package hsmtoken

import (
	"context"
	"errors"
	"fmt"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/keys"
)

// Token adapts an hsm.Module to keys.Token.
type Token struct{ M *hsm.Module }

// Kind maps a purpose to the HSM key kind that implements it.
func Kind(p keys.Purpose) (hsm.Kind, bool) {
	switch p {
	case keys.PurposeEncryptAES256GCM:
		return hsm.KindAES256, true
	case keys.PurposeMACHMACSHA256:
		return hsm.KindHMACSHA256, true
	case keys.PurposeSignECDSAP256:
		return hsm.KindECDSAP256, true
	case keys.PurposeSignECDSAP384:
		return hsm.KindECDSAP384, true
	case keys.PurposeSignEd25519:
		return hsm.KindEd25519, true
	case keys.PurposeSignRSAPSS3072:
		return hsm.KindRSA3072PSS, true
	}
	return hsm.KindInvalid, false
}

// Key is the hsm.Key of a registry object.
func Key(o keys.Object) hsm.Key {
	k, _ := Kind(o.Purpose)
	return hsm.Key{ID: o.ID, Label: o.Label, Kind: k}
}

// Create implements keys.Token.
func (t Token) Create(ctx context.Context, p keys.Purpose, label string) ([]byte, keys.Attrs, error) {
	kind, ok := Kind(p)
	if !ok {
		return nil, keys.Attrs{}, fmt.Errorf("%w: no hsm key kind for purpose %v", keys.ErrInvalidArgument, p)
	}
	hk, a, err := t.M.CreateKey(ctx, kind, label)
	if err != nil {
		return nil, keys.Attrs{}, err
	}
	return hk.ID, keys.Attrs{Attrs: a.Custody()}, nil
}

// Find implements keys.Token.
func (t Token) Find(ctx context.Context, o keys.Object) error {
	err := t.M.Find(ctx, Key(o))
	if errors.Is(err, hsm.ErrNotFound) {
		return fmt.Errorf("%w: %w", keys.ErrObjectMissing, err)
	}
	return err
}

// Destroy implements keys.Token.
func (t Token) Destroy(ctx context.Context, o keys.Object) error {
	err := t.M.Destroy(ctx, Key(o))
	if errors.Is(err, hsm.ErrNotFound) {
		return nil
	}
	return err
}

// Index implements keys.Token.
func (t Token) Index(ctx context.Context) error {
	_, err := t.M.Index(ctx)
	return err
}
