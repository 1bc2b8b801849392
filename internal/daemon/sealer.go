package daemon

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/custodyhq/custody/hsm"
)

// hsmSealer authenticates every store value with HMAC-SHA256 under a
// non-extractable HSM key, binding the value to its store key. Someone who
// edits the bbolt file (grants, key states) without the HSM cannot forge a
// value; custodyd refuses to load a tampered store.
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

func sealCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func (s *hsmSealer) Seal(key string, value []byte) ([]byte, error) {
	ctx, cancel := sealCtx()
	defer cancel()
	mac, err := s.m.MAC(ctx, s.k, s.input(key, value))
	if err != nil {
		return nil, err
	}
	return append(append([]byte(nil), value...), mac...), nil
}

var errBadSeal = errors.New("store value failed authentication")

func (s *hsmSealer) Open(key string, sealed []byte) ([]byte, error) {
	if len(sealed) < 32 {
		return nil, errBadSeal
	}
	value, mac := sealed[:len(sealed)-32], sealed[len(sealed)-32:]
	ctx, cancel := sealCtx()
	defer cancel()
	ok, err := s.m.VerifyMAC(ctx, s.k, s.input(key, value), mac)
	if err != nil {
		return nil, fmt.Errorf("verify store value: %w", err)
	}
	if !ok {
		return nil, errBadSeal
	}
	return value, nil
}

// unverifiedValue is a stored value without its MAC, for the few reads a
// sealed custodyd makes before it can use the MAC key (the seal record);
// the value is authenticated again once the HSM is logged in.
func unverifiedValue(sealed []byte) ([]byte, error) {
	if len(sealed) < 32 {
		return nil, errBadSeal
	}
	return sealed[:len(sealed)-32], nil
}
