package client

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// These tests cover the sealed-message format with data keys made here;
// only custodyd can make and unwrap real ones (see e2e_test.go).

var testWrappedKey = []byte("wrapped-by-custodyd")

func TestSealedMessageRoundTripsAndCarriesTheWrappedKey(t *testing.T) {
	key := keyOf(0x42)
	encCtx := map[string]string{"tenant": "acme", "msg": "1"}
	for _, pt := range [][]byte{nil, []byte("hi"), bytes.Repeat([]byte("x"), 100000)} {
		sealed, err := sealMessage(key, testWrappedKey, pt, encCtx)
		if err != nil {
			t.Fatal(err)
		}
		if want := 1 + 2 + len(testWrappedKey) + nonceSize + len(pt) + tagSize; len(sealed) != want {
			t.Errorf("sealed %d bytes is %d long, want %d", len(pt), len(sealed), want)
		}
		m, err := parseSealed(sealed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m.wrappedKey, testWrappedKey) || m.conversationID != "" {
			t.Fatalf("parsed wrapped key %q, conversation %q", m.wrappedKey, m.conversationID)
		}
		got, err := m.open(key, m.effectiveContext(encCtx))
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("round trip of %d bytes: %d bytes, %v", len(pt), len(got), err)
		}
	}
}

func TestSealingTwiceGivesDifferentMessages(t *testing.T) {
	key := keyOf(1)
	a, _ := sealMessage(key, testWrappedKey, []byte("same"), nil)
	b, _ := sealMessage(key, testWrappedKey, []byte("same"), nil)
	if bytes.Equal(a, b) {
		t.Fatal("two seals of one plaintext under one key are identical: nonce not random")
	}
}

func TestOpenRejectsAnyAlteredByte(t *testing.T) {
	key := keyOf(1)
	sealed, err := sealMessage(key, testWrappedKey, []byte("attack at dawn"), map[string]string{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x80
		m, err := parseSealed(bad)
		if err != nil {
			if !errors.Is(err, ErrMessageFormat) {
				t.Errorf("byte %d: parse err = %v", i, err)
			}
			continue
		}
		if _, err := m.open(key, map[string]string{"a": "b"}); !errors.Is(err, ErrMessageAuth) {
			t.Errorf("byte %d altered: err = %v, want %v", i, err, ErrMessageAuth)
		}
	}
}

func TestOpenRejectsAnotherContextOrKey(t *testing.T) {
	key := keyOf(1)
	sealed, err := sealMessage(key, testWrappedKey, []byte("secret"), map[string]string{"tenant": "acme"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseSealed(sealed)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]map[string]string{
		"other value": {"tenant": "evil"},
		"extra entry": {"tenant": "acme", "x": "y"},
		"no context":  nil,
	} {
		if _, err := m.open(key, c); !errors.Is(err, ErrMessageAuth) {
			t.Errorf("%s: err = %v, want %v", name, err, ErrMessageAuth)
		}
	}
	if _, err := m.open(keyOf(2), map[string]string{"tenant": "acme"}); !errors.Is(err, ErrMessageAuth) {
		t.Errorf("other data key: err = %v, want %v", err, ErrMessageAuth)
	}
}

func TestParseRejectsMalformedMessages(t *testing.T) {
	valid, err := sealMessage(keyOf(1), testWrappedKey, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string][]byte{
		"empty":               nil,
		"unknown version":     append([]byte{9}, valid[1:]...),
		"a CSTY stream":       []byte("CSTY\x01\x00\x00\x00\x40rest-of-a-stream-header"),
		"no wrapped key":      {1, 0, 0},
		"cut inside tag":      valid[:len(valid)-tagSize],
		"wrapped len too big": append([]byte{1, 0xff, 0xff}, valid[3:]...),
		"empty conversation":  {2, 0, 0, 1, 'w'},
		"conversation cut":    {2, 10, 'a', 'b'},
	} {
		if _, err := parseSealed(in); !errors.Is(err, ErrMessageFormat) {
			t.Errorf("%s: err = %v, want %v", name, err, ErrMessageFormat)
		}
	}
}

func newTestSealer(t *testing.T, limit uint64, encCtx map[string]string) *Sealer {
	t.Helper()
	s, err := newSealer(keyOf(3), testWrappedKey, "conv-1", withConversation(encCtx, "conv-1"), limit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestConversationMessagesUseCounterNoncesAndOpenWithTheCallersContext(t *testing.T) {
	encCtx := map[string]string{"tenant": "acme"}
	s := newTestSealer(t, 100, encCtx)
	var prefix []byte
	for i := range 3 {
		pt := []byte{byte(i)}
		sealed, err := s.Seal(pt)
		if err != nil {
			t.Fatal(err)
		}
		m, err := parseSealed(sealed)
		if err != nil {
			t.Fatal(err)
		}
		if m.conversationID != "conv-1" || !bytes.Equal(m.wrappedKey, testWrappedKey) {
			t.Fatalf("message %d: conversation %q, wrapped %q", i, m.conversationID, m.wrappedKey)
		}
		if got := binary.BigEndian.Uint64(m.nonce[4:]); got != uint64(i) {
			t.Fatalf("message %d has counter %d", i, got)
		}
		if prefix == nil {
			prefix = m.nonce[:4]
		} else if !bytes.Equal(prefix, m.nonce[:4]) {
			t.Fatal("nonce prefix changed within one sealer")
		}
		// The reader gives only its own context; the conversation comes
		// from the message.
		eff := m.effectiveContext(encCtx)
		if eff[ConversationContextKey] != "conv-1" {
			t.Fatalf("effective context %v lacks the conversation", eff)
		}
		got, err := m.open(keyOf(3), eff)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("message %d opened to %x, %v", i, got, err)
		}
		if _, err := m.open(keyOf(3), withConversation(encCtx, "conv-2")); !errors.Is(err, ErrMessageAuth) {
			t.Fatalf("message %d opened as another conversation: %v", i, err)
		}
	}
}

func TestSealerStopsAtItsMessageLimit(t *testing.T) {
	s := newTestSealer(t, 2, nil)
	for i := range 2 {
		if _, err := s.Seal([]byte("m")); err != nil {
			t.Fatalf("message %d of 2: %v", i, err)
		}
	}
	if s.Remaining() != 0 {
		t.Fatalf("Remaining = %d after the limit", s.Remaining())
	}
	if _, err := s.Seal([]byte("m")); !errors.Is(err, ErrSealerExhausted) {
		t.Fatalf("message past the limit: err = %v, want %v", err, ErrSealerExhausted)
	}
}

func TestSealerCloseZeroesItsKey(t *testing.T) {
	s := newTestSealer(t, 10, nil)
	k := s.key
	if _, err := s.Seal([]byte("m")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if !isZero(k) {
		t.Fatalf("sealer key not zeroed by Close: %x", k)
	}
	if _, err := s.Seal([]byte("m")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Seal after Close: err = %v, want %v", err, ErrClosed)
	}
	if s.Remaining() != 0 {
		t.Fatal("closed sealer reports remaining messages")
	}
}

func TestSealerIsSafeForConcurrentUseAndNeverRepeatsANonce(t *testing.T) {
	s := newTestSealer(t, 1000, nil)
	const workers, each = 4, 50
	nonces := make(chan string, workers*each)
	errs := make(chan error, workers)
	for range workers {
		go func() {
			for range each {
				sealed, err := s.Seal([]byte("m"))
				if err != nil {
					errs <- err
					return
				}
				m, err := parseSealed(sealed)
				if err != nil {
					errs <- err
					return
				}
				nonces <- string(m.nonce)
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(nonces)
	seen := map[string]bool{}
	for n := range nonces {
		if seen[n] {
			t.Fatal("a nonce was used twice under one data key")
		}
		seen[n] = true
	}
	if len(seen) != workers*each {
		t.Fatalf("%d distinct nonces, want %d", len(seen), workers*each)
	}
}
