package daemon

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/store"
)

// hsmSealer authenticates every store value with HMAC-SHA256 under a
// non-extractable HSM key, binding the value to its store key. Someone who
// edits the bbolt file (grants, key states) without the HSM cannot forge a
// value; custodyd refuses to load a tampered store. A tag that does not
// verify is tampering; an HSM that cannot be reached is not.
type hsmSealer struct {
	m *hsm.Module
	k hsm.Key
}

const sealDomain = "custody-store-v1\x00"

func (s *hsmSealer) input(key string, value []byte) []byte {
	b := make([]byte, 0, len(sealDomain)+4+len(key)+len(value))
	b = append(b, sealDomain...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(key)))
	b = append(b, key...)
	return append(b, value...)
}

// Seal implements store.Sealer.
func (s *hsmSealer) Seal(ctx context.Context, key string, value []byte) ([]byte, error) {
	mac, err := s.m.MAC(ctx, s.k, s.input(key, value))
	if err != nil {
		return nil, err
	}
	return append(append([]byte(nil), value...), mac...), nil
}

var errBadSeal = fmt.Errorf("store value failed authentication: %w", store.ErrTampered)

// Open implements store.Sealer.
func (s *hsmSealer) Open(ctx context.Context, key string, sealed []byte) ([]byte, error) {
	if len(sealed) < 32 {
		return nil, errBadSeal
	}
	value, mac := sealed[:len(sealed)-32], sealed[len(sealed)-32:]
	ok, err := s.m.VerifyMAC(ctx, s.k, s.input(key, value), mac)
	if err != nil {
		return nil, fmt.Errorf("verify store value: %w", err)
	}
	if !ok {
		return nil, errBadSeal
	}
	return value, nil
}

// contextDigester derives the context digest key from the store's HSM MAC
// key under its own domain (no store value's MAC input starts with it), so
// the digests are keyed by the HSM without a second HSM key, and the
// derived key exists only in this process's memory.
func contextDigester(ctx context.Context, m *hsm.Module, k hsm.Key) (*keys.ContextDigester, error) {
	key, err := m.MAC(ctx, k, []byte(keys.ContextDigestKeyLabel))
	if err != nil {
		return nil, fmt.Errorf("derive context digest key: %w", err)
	}
	defer clear(key)
	if len(key) != 32 {
		return nil, errors.New("derive context digest key: unexpected mac length")
	}
	return keys.NewContextDigester(key)
}

// unverifiedValue is a stored value without its MAC (and without the write
// revision the store puts in front of it), for the few reads a sealed
// custodyd makes before it can use the MAC key (the seal record); the value
// is authenticated again once the HSM is logged in.
func unverifiedValue(sealed []byte) ([]byte, error) {
	if len(sealed) < 32 {
		return nil, errBadSeal
	}
	return store.UnverifiedPayload(sealed[:len(sealed)-32]), nil
}
