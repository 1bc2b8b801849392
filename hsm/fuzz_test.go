package hsm_test

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"testing"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// FuzzBadInputIsTheCallersFaultOnEveryToken feeds arbitrary bytes to every
// operation that takes caller bytes, on a SoftHSM and an NSS token at once
// (two libraries, so two modules may be open together). No input may look
// like a device fault: that would close sessions and start recoveries on a
// caller's say-so. The seeds run in every `go test`; `make fuzz` explores.
func FuzzBadInputIsTheCallersFaultOnEveryToken(f *testing.F) {
	type target struct {
		kind            hsmtest.Kind
		m               *hsm.Module
		aes, other, sig hsm.Key
		mac             hsm.Key
		wrapped         []byte
	}
	var targets []*target
	relay, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		f.Fatal(err)
	}
	for _, kind := range hsmtest.Kinds {
		tok := hsmtest.NewKind(f, kind)
		m := tok.Open(f)
		ctx := ctxT(f)
		tg := &target{kind: kind, m: m}
		for i, k := range []struct {
			dst  *hsm.Key
			kind hsm.Kind
		}{{&tg.aes, hsm.KindAES256}, {&tg.other, hsm.KindAES256}, {&tg.sig, hsm.KindECDSAP256}, {&tg.mac, hsm.KindHMACSHA256}} {
			var err error
			if *k.dst, _, err = m.CreateKey(ctx, k.kind, fmt.Sprintf("k%d", i)); err != nil {
				f.Fatal(err)
			}
		}
		if tg.wrapped, _, err = m.GenerateDataKey(ctx, tg.aes, false); err != nil {
			f.Fatal(err)
		}
		targets = append(targets, tg)
	}
	f.Add(byte(0), make([]byte, 12+16))
	f.Add(byte(1), targets[0].wrapped)
	f.Add(byte(1), targets[1].wrapped)
	f.Add(byte(2), make([]byte, 40))
	f.Add(byte(3), []byte("not a digest"))
	f.Add(byte(5), make([]byte, 1<<10))
	f.Add(byte(6), []byte{})
	f.Fuzz(func(t *testing.T, op byte, data []byte) {
		ctx := ctxT(t)
		for _, tg := range targets {
			var err error
			m := tg.m
			switch op % 7 {
			case 0:
				if len(data) >= 12 {
					_, err = m.Decrypt(ctx, tg.aes, data[:12], data[12:], data[:len(data)/2])
				}
			case 1:
				_, err = m.UnwrapDataKey(ctx, tg.aes, data)
			case 2:
				_, err = m.RewrapDataKey(ctx, tg.aes, tg.other, data)
			case 3:
				_, err = m.Sign(ctx, tg.sig, data)
			case 4:
				_, _, err = m.UnwrapDataKeyFor(ctx, tg.aes, data, &relay.PublicKey)
			case 5:
				_, err = m.MAC(ctx, tg.mac, data)
			case 6:
				_, _, err = m.Encrypt(ctx, tg.aes, data, data)
			}
			if err != nil && !errors.Is(err, hsm.ErrDecrypt) && !errors.Is(err, hsm.ErrInvalidInput) {
				t.Fatalf("%s op %d: %v: not a caller error", tg.kind, op%7, err)
			}
			if st := m.Stats(); st.DeviceErrors != 0 || st.SessionsClosed != 0 || st.State != hsm.StateReady {
				t.Fatalf("%s op %d: caller input disturbed the module: %+v", tg.kind, op%7, st)
			}
		}
	})
}
