package keys

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// testMaster is the AES-256 key 000102..1f used by docs/envelope.md.
var testMaster = func() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}()

func testGCM(t testing.TB) cipher.AEAD {
	t.Helper()
	block, err := aes.NewCipher(testMaster)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return gcm
}

func repeat(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// sampleCiphertext returns a valid format 0x01 envelope with a body of n bytes.
func sampleCiphertext(t testing.TB, keyIDLen, n int) *Envelope {
	t.Helper()
	e, err := NewCiphertext(repeat(0xaa, keyIDLen), 3, repeat(0x01, IVLen), repeat(0x02, n+TagLen))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// sampleWrapped returns a valid format 0x02 envelope with a wrapped key of n bytes.
func sampleWrapped(t testing.TB, keyIDLen, n int) *Envelope {
	t.Helper()
	e, err := NewWrappedKey(repeat(0xbb, keyIDLen), 7, repeat(0x03, IVLen), repeat(0x04, n), repeat(0x05, TagLen))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// sampleSealed returns a valid format 0x03 envelope.
func sampleSealed(t testing.TB, keyIDLen int) *Envelope {
	t.Helper()
	e, err := NewSealedKey(repeat(0xcc, keyIDLen), 9, repeat(0x06, IVLen), repeat(0x07, SealedKeyLen+TagLen))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func marshal(t testing.TB, e *Envelope) []byte {
	t.Helper()
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseRoundTripsEveryFieldOfEveryFormat(t *testing.T) {
	tests := []struct {
		name string
		env  *Envelope
	}{
		{"ciphertext, 1-byte key id, empty plaintext", sampleCiphertext(t, 1, 0)},
		{"ciphertext, 16-byte key id", sampleCiphertext(t, 16, 100)},
		{"ciphertext, 64-byte key id, largest plaintext", sampleCiphertext(t, MaxKeyIDLen, MaxPlaintextLen)},
		{"wrapped key, smallest", sampleWrapped(t, 1, MinWrappedKeyLen)},
		{"wrapped key, 32-byte data key", sampleWrapped(t, 16, 40)},
		{"wrapped key, largest", sampleWrapped(t, MaxKeyIDLen, MaxWrappedKeyLen)},
		{"sealed key, 1-byte key id", sampleSealed(t, 1)},
		{"sealed key, 16-byte key id", sampleSealed(t, 16)},
		{"sealed key, 64-byte key id", sampleSealed(t, MaxKeyIDLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wire := marshal(t, tt.env)
			got, err := Parse(wire)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.env) {
				t.Fatalf("Parse(Marshal(e)) = %+v, want %+v", got, tt.env)
			}
			if again := marshal(t, got); !bytes.Equal(again, wire) {
				t.Fatalf("Marshal(Parse(b)) != b")
			}
		})
	}
}

func TestParseRefusesMalformedEnvelopes(t *testing.T) {
	ct := marshal(t, sampleCiphertext(t, 16, 5)) // 1+1+16+4+12+5+16 = 55 bytes
	wk := marshal(t, sampleWrapped(t, 16, 40))   // 1+1+16+4+12+2+40+16 = 92 bytes
	sk := marshal(t, sampleSealed(t, 16))        // 1+1+16+4+12+32+16 = 82 bytes
	big := marshal(t, sampleCiphertext(t, 16, MaxPlaintextLen))
	with := func(b []byte, edit func([]byte) []byte) []byte { return edit(bytes.Clone(b)) }
	wrappedLen := func(n uint16) func([]byte) []byte {
		return func(b []byte) []byte { b[34], b[35] = byte(n>>8), byte(n); return b }
	}
	tests := []struct {
		name  string
		in    []byte
		field string
	}{
		{"empty", nil, "length"},
		{"format 0x00", with(ct, func(b []byte) []byte { b[0] = 0; return b }), "format"},
		{"format 0x04", with(wk, func(b []byte) []byte { b[0] = 4; return b }), "format"},
		{"wrapped key relabelled as sealed key", with(wk, func(b []byte) []byte { b[0] = FormatSealedKey; return b }), "body"},
		{"ciphertext relabelled as sealed key", with(ct, func(b []byte) []byte { b[0] = FormatSealedKey; return b }), "body"},
		{"format byte only", []byte{FormatCiphertext}, "key_id"},
		{"key id length 0", with(ct, func(b []byte) []byte { b[1] = 0; return b }), "key_id"},
		{"key id length 65", append([]byte{FormatCiphertext, 65}, make([]byte, 200)...), "key_id"},
		{"key id longer than envelope", []byte{FormatCiphertext, 16, 1, 2, 3}, "key_id"},
		{"version 0", with(ct, func(b []byte) []byte { copy(b[18:22], []byte{0, 0, 0, 0}); return b }), "version"},
		{"truncated in version", ct[:20], "version"},
		{"truncated in iv", ct[:30], "iv"},
		{"ciphertext shorter than tag", ct[:34+15], "tag"},
		{"ciphertext over the limit", append(bytes.Clone(big), 0), "body"},
		{"wrapped key length 16", with(wk, wrappedLen(16)), "body"},
		{"wrapped key length 25", with(wk, wrappedLen(25)), "body"},
		{"wrapped key length 1032", with(wk, wrappedLen(1032)), "body"},
		{"wrapped key length missing", wk[:35], "body"},
		{"wrapped key truncated", wk[:60], "body"},
		{"binding tag truncated", wk[:len(wk)-1], "tag"},
		{"byte after binding tag", append(bytes.Clone(wk), 0), "length"},
		{"sealed key one byte short", append(bytes.Clone(sk[:len(sk)-TagLen-1]), sk[len(sk)-TagLen:]...), "body"},
		{"sealed key one byte long", append(bytes.Clone(sk), 0), "body"},
		{"sealed key shorter than tag", sk[:34+15], "tag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse accepted %x as %+v", tt.in, e)
			}
			if !errors.Is(err, ErrMalformed) || !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("err = %v, want ErrMalformed and ErrInvalidArgument", err)
			}
			var me *MalformedError
			if !errors.As(err, &me) || me.Field != tt.field {
				t.Fatalf("err = %v, want a MalformedError for field %q", err, tt.field)
			}
		})
	}
}

func TestParseRefusesEveryTruncationOfWrappedKey(t *testing.T) {
	wk := marshal(t, sampleWrapped(t, 16, 40))
	for n := range len(wk) {
		if _, err := Parse(wk[:n]); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse of first %d of %d bytes: err = %v, want ErrMalformed", n, len(wk), err)
		}
	}
}

func TestParsedEnvelopeDoesNotAliasInput(t *testing.T) {
	wire := marshal(t, sampleWrapped(t, 16, 40))
	e, err := Parse(wire)
	if err != nil {
		t.Fatal(err)
	}
	before := marshal(t, e)
	for i := range wire {
		wire[i] ^= 0xff
	}
	if after := marshal(t, e); !bytes.Equal(before, after) {
		t.Fatal("changing the input buffer changed the parsed envelope")
	}
}

func TestMarshalRefusesInvalidEnvelopes(t *testing.T) {
	valid := func() *Envelope { return sampleWrapped(t, 16, 40) }
	tests := []struct {
		name  string
		edit  func(*Envelope)
		field string
	}{
		{"unknown format", func(e *Envelope) { e.Format = 9 }, "format"},
		{"empty key id", func(e *Envelope) { e.KeyID = nil }, "key_id"},
		{"65-byte key id", func(e *Envelope) { e.KeyID = make([]byte, 65) }, "key_id"},
		{"version 0", func(e *Envelope) { e.Version = 0 }, "version"},
		{"11-byte iv", func(e *Envelope) { e.IV = e.IV[:11] }, "iv"},
		{"13-byte iv", func(e *Envelope) { e.IV = append(e.IV, 0) }, "iv"},
		{"15-byte tag", func(e *Envelope) { e.Tag = e.Tag[:15] }, "tag"},
		{"wrapped key not a multiple of 8", func(e *Envelope) { e.Body = e.Body[:39] }, "body"},
		{"ciphertext over the limit", func(e *Envelope) { e.Format = FormatCiphertext; e.Body = make([]byte, MaxPlaintextLen+1) }, "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := valid()
			tt.edit(e)
			b, err := e.Marshal()
			var me *MalformedError
			if !errors.As(err, &me) || me.Field != tt.field {
				t.Fatalf("Marshal = %x, %v; want a MalformedError for field %q", b, err, tt.field)
			}
		})
	}
}

func TestNewCiphertextRefusesOutputShorterThanTag(t *testing.T) {
	_, err := NewCiphertext([]byte{1}, 1, make([]byte, IVLen), make([]byte, TagLen-1))
	var me *MalformedError
	if !errors.As(err, &me) || me.Field != "tag" {
		t.Fatalf("err = %v, want a MalformedError for the tag", err)
	}
}

func TestCiphertextDecryptsOnlyUnderItsKeyIDVersionAndContext(t *testing.T) {
	gcm := testGCM(t)
	keyID := repeat(0x11, 16)
	ctx := map[string]string{"tenant": "acme", "conversation": "c-42"}
	iv := make([]byte, IVLen)
	rand.Read(iv)
	aad, err := CiphertextAAD(keyID, 3, ctx)
	if err != nil {
		t.Fatal(err)
	}
	env, err := NewCiphertext(keyID, 3, iv, gcm.Seal(nil, iv, []byte("secret"), aad))
	if err != nil {
		t.Fatal(err)
	}
	open := func(e *Envelope, ctx map[string]string) error {
		aad, err := e.AAD(ctx)
		if err != nil {
			return err
		}
		_, err = gcm.Open(nil, e.IV, e.Sealed(), aad)
		return err
	}
	// Same context built in another order: must open.
	same := map[string]string{}
	same["conversation"] = "c-42"
	same["tenant"] = "acme"
	if err := open(env, same); err != nil {
		t.Fatalf("decrypt with the same context failed: %v", err)
	}
	tests := []struct {
		name string
		edit func(*Envelope)
		ctx  map[string]string
	}{
		{"other key id", func(e *Envelope) { e.KeyID = repeat(0x12, 16) }, ctx},
		{"other version", func(e *Envelope) { e.Version = 4 }, ctx},
		{"changed value", nil, map[string]string{"tenant": "acme", "conversation": "c-43"}},
		{"missing pair", nil, map[string]string{"tenant": "acme"}},
		{"extra pair", nil, map[string]string{"tenant": "acme", "conversation": "c-42", "x": ""}},
		{"no context", nil, nil},
		{"pair boundary moved", nil, map[string]string{"tenant": "acme", "conversatio": "nc-42"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := *env
			if tt.edit != nil {
				tt.edit(&e)
			}
			if err := open(&e, tt.ctx); err == nil {
				t.Fatal("ciphertext opened under a different binding")
			}
		})
	}
}

// TestWrappedKeyCannotBeMovedToAnotherContext is the reason the binding AAD
// covers the wrapped key: a relay authorised for context B must not be able
// to splice a wrapped key issued under context A into B's envelope.
func TestWrappedKeyCannotBeMovedToAnotherContext(t *testing.T) {
	gcm := testGCM(t)
	keyID := repeat(0x11, 16)
	issue := func(ctx map[string]string, dataKey []byte) *Envelope {
		wrapped, err := kwpWrap(testMaster, dataKey)
		if err != nil {
			t.Fatal(err)
		}
		iv := make([]byte, IVLen)
		rand.Read(iv)
		aad, err := WrappedKeyAAD(keyID, 1, wrapped, ctx)
		if err != nil {
			t.Fatal(err)
		}
		e, err := NewWrappedKey(keyID, 1, iv, wrapped, gcm.Seal(nil, iv, nil, aad))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	ctxA := map[string]string{"conversation": "a"}
	ctxB := map[string]string{"conversation": "b"}
	a := issue(ctxA, repeat(0xa0, 32))
	b := issue(ctxB, repeat(0xb0, 32))
	verify := func(e *Envelope, ctx map[string]string) error {
		aad, err := e.AAD(ctx)
		if err != nil {
			return err
		}
		_, err = gcm.Open(nil, e.IV, e.Tag, aad)
		return err
	}
	if err := verify(b, ctxB); err != nil {
		t.Fatalf("genuine envelope refused: %v", err)
	}
	if err := verify(a, ctxB); err == nil {
		t.Fatal("envelope A verified under context B")
	}
	spliced := *b
	spliced.Body = a.Body
	if err := verify(&spliced, ctxB); err == nil {
		t.Fatal("wrapped key from context A verified inside an envelope for context B")
	}
}

func TestAADSeparatesFormats(t *testing.T) {
	keyID := repeat(0x11, 16)
	ct, err := CiphertextAAD(keyID, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	wk, err := WrappedKeyAAD(keyID, 1, repeat(0, 24), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(ct, []byte("custody/v1 ciphertext")) || !bytes.Contains(wk, []byte("custody/v1 wrapped-data-key")) {
		t.Fatalf("AADs lack their domain strings: %x / %x", ct, wk)
	}
	if bytes.HasPrefix(wk, ct[:len(ct)-4]) {
		t.Fatal("wrapped-key AAD extends the ciphertext AAD")
	}
	sk, err := SealedKeyAAD(keyID, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(sk, []byte("custody/v1 sealed-data-key")) {
		t.Fatalf("sealed-key AAD lacks its domain string: %x", sk)
	}
	// Same key id, version and context: only the domain and format byte
	// differ, so a sealed key can never pass as a ciphertext or back.
	if bytes.Equal(sk, ct) || bytes.HasPrefix(sk, ct[:len(ct)-4]) || bytes.HasPrefix(ct, sk[:len(sk)-4]) {
		t.Fatal("sealed-key and ciphertext AADs overlap")
	}
	env := sampleSealed(t, 16)
	if got, _ := env.AAD(nil); !bytes.Equal(got[:4+len(domainSealedKey)+1], sk[:4+len(domainSealedKey)+1]) {
		t.Fatal("Envelope.AAD of a sealed key is not SealedKeyAAD")
	}
}

func TestAADRefusesWhatParseWouldRefuse(t *testing.T) {
	good := map[string]string{"k": "v"}
	tests := []struct {
		name string
		err  error
		call func() ([]byte, error)
	}{
		{"empty key id", ErrMalformed, func() ([]byte, error) { return CiphertextAAD(nil, 1, good) }},
		{"version 0", ErrMalformed, func() ([]byte, error) { return CiphertextAAD([]byte{1}, 0, good) }},
		{"sealed key, version 0", ErrMalformed, func() ([]byte, error) { return SealedKeyAAD([]byte{1}, 0, good) }},
		{"sealed key, invalid context", ErrInvalidContext, func() ([]byte, error) { return SealedKeyAAD([]byte{1}, 1, map[string]string{"": "v"}) }},
		{"invalid context", ErrInvalidContext, func() ([]byte, error) { return CiphertextAAD([]byte{1}, 1, map[string]string{"": "v"}) }},
		{"bad wrapped key length", ErrMalformed, func() ([]byte, error) { return WrappedKeyAAD([]byte{1}, 1, make([]byte, 20), good) }},
		{"wrapped key with invalid context", ErrInvalidContext, func() ([]byte, error) {
			return WrappedKeyAAD([]byte{1}, 1, make([]byte, 24), map[string]string{"k": "\xff"})
		}},
		{"envelope of unknown format", ErrMalformed, func() ([]byte, error) { return (&Envelope{Format: 7}).AAD(good) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			aad, err := tt.call()
			if !errors.Is(err, tt.err) {
				t.Fatalf("got %x, %v; want %v", aad, err, tt.err)
			}
		})
	}
}

func TestMalformedErrorDoesNotEchoEnvelope(t *testing.T) {
	marker := []byte("SECRET-MARKER-0123456789")
	in := append([]byte{FormatWrappedKey, byte(len(marker))}, marker...)
	in = append(in, 0, 0, 0, 1)
	_, err := Parse(append(in, marker...))
	if err == nil {
		t.Fatal("Parse accepted garbage")
	}
	if strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "5345435245") {
		t.Fatalf("error echoes envelope bytes: %v", err)
	}
}
