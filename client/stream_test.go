package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
)

// testKey returns a fresh random data key; the wrapped key in these tests is
// an opaque stand-in because only custodyd can unwrap a real one.
func testKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, DataKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

var testWrapped = []byte("wrapped-data-key-envelope-from-custodyd")

func encryptBytes(t *testing.T, key, plaintext []byte, chunkSize int) []byte {
	t.Helper()
	h, err := NewStreamHeader(testWrapped, chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	n, err := EncryptStream(context.Background(), &out, bytes.NewReader(plaintext), h, key)
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	if n != int64(len(plaintext)) {
		t.Fatalf("encrypt read %d bytes, want %d", n, len(plaintext))
	}
	return out.Bytes()
}

func decryptBytes(key, file []byte) ([]byte, *StreamHeader, error) {
	r := bytes.NewReader(file)
	h, err := ReadStreamHeader(r)
	if err != nil {
		return nil, nil, err
	}
	var out bytes.Buffer
	n, err := DecryptStream(context.Background(), &out, r, h, key)
	if err == nil && n != int64(out.Len()) {
		return nil, nil, errors.New("decrypt count disagrees with output")
	}
	return out.Bytes(), h, err
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStreamRoundTripsAcrossChunkBoundaries(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int
		chunks int
	}{
		{"empty", 0, 1},
		{"one byte", 1, 1},
		{"exactly one chunk", DefaultChunkSize, 1},
		{"one chunk plus one byte", DefaultChunkSize + 1, 2},
		{"1 MiB plus 7 bytes", 1<<20 + 7, 17},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := testKey(t)
			pt := randomBytes(t, tc.size)
			file := encryptBytes(t, key, pt, DefaultChunkSize)

			wantLen := streamHeaderFixed + len(testWrapped) + tc.size + tc.chunks*16
			if len(file) != wantLen {
				t.Errorf("file is %d bytes, want %d (%d chunks)", len(file), wantLen, tc.chunks)
			}
			got, h, err := decryptBytes(key, file)
			if err != nil {
				t.Fatalf("decrypt: %v", err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatalf("round trip changed the data (%d bytes in, %d out)", len(pt), len(got))
			}
			if !bytes.Equal(h.WrappedKey(), testWrapped) || h.ChunkSize() != DefaultChunkSize {
				t.Errorf("header read back as chunk %d, wrapped %q", h.ChunkSize(), h.WrappedKey())
			}
		})
	}
}

func TestStreamHeaderLayoutMatchesDocumentedFormat(t *testing.T) {
	file := encryptBytes(t, testKey(t), []byte("x"), 4096)
	if string(file[:4]) != "CSTY" || file[4] != 1 {
		t.Fatalf("magic/version = %q/%d", file[:4], file[4])
	}
	if cs := binary.BigEndian.Uint32(file[5:9]); cs != 4096 {
		t.Errorf("chunk size field = %d, want 4096", cs)
	}
	if wl := binary.BigEndian.Uint16(file[16:18]); int(wl) != len(testWrapped) {
		t.Errorf("wrapped key length field = %d, want %d", wl, len(testWrapped))
	}
	if !bytes.Equal(file[18:18+len(testWrapped)], testWrapped) {
		t.Errorf("wrapped key not at offset 18")
	}
}

func TestTwoEncryptionsOfSameDataUseDifferentNonces(t *testing.T) {
	key := testKey(t)
	a := encryptBytes(t, key, []byte("same"), 64)
	b := encryptBytes(t, key, []byte("same"), 64)
	if bytes.Equal(a, b) {
		t.Fatal("two encryptions under one key are identical: nonce prefix is not random")
	}
}

// chunked returns a 3-full-chunk-plus-tail file with a small chunk size so
// that chunk surgery is easy, and its plaintext.
func chunked(t *testing.T, key []byte) (file, pt []byte, headerLen, chunkLen int) {
	t.Helper()
	const cs = 100
	pt = randomBytes(t, 3*cs+10)
	return encryptBytes(t, key, pt, cs), pt, streamHeaderFixed + len(testWrapped), cs + 16
}

func TestStreamDecryptDetectsTruncationAtChunkBoundary(t *testing.T) {
	key := testKey(t)
	file, _, hl, cl := chunked(t, key)
	for _, keep := range []int{0, 1, 2, 3} {
		cut := file[:hl+keep*cl]
		if _, _, err := decryptBytes(key, cut); !errors.Is(err, ErrStreamTruncated) {
			t.Errorf("file cut after %d full chunks: err = %v, want %v", keep, err, ErrStreamTruncated)
		}
	}
}

func TestStreamDecryptDetectsTruncationInsideChunk(t *testing.T) {
	key := testKey(t)
	file, _, _, _ := chunked(t, key)
	for _, drop := range []int{1, 16, 26, 27} {
		_, _, err := decryptBytes(key, file[:len(file)-drop])
		if !errors.Is(err, ErrStreamAuth) && !errors.Is(err, ErrStreamTruncated) {
			t.Errorf("file missing its last %d bytes decrypted: err = %v", drop, err)
		}
	}
}

func TestStreamDecryptDetectsReorderedChunks(t *testing.T) {
	key := testKey(t)
	file, _, hl, cl := chunked(t, key)
	swapped := bytes.Clone(file)
	copy(swapped[hl:hl+cl], file[hl+cl:hl+2*cl])
	copy(swapped[hl+cl:hl+2*cl], file[hl:hl+cl])
	if _, _, err := decryptBytes(key, swapped); !errors.Is(err, ErrStreamAuth) {
		t.Fatalf("swapped chunks 0 and 1: err = %v, want %v", err, ErrStreamAuth)
	}
	// Duplicating a chunk in place of a later one is reordering too.
	dup := bytes.Clone(file)
	copy(dup[hl+2*cl:hl+3*cl], file[hl+cl:hl+2*cl])
	if _, _, err := decryptBytes(key, dup); !errors.Is(err, ErrStreamAuth) {
		t.Fatalf("duplicated chunk 1 over chunk 2: err = %v, want %v", err, ErrStreamAuth)
	}
}

func TestStreamDecryptDetectsTamperingAnywhere(t *testing.T) {
	key := testKey(t)
	file, _, hl, _ := chunked(t, key)
	// Every byte after the fixed magic/version, header included: flipping
	// the wrapped key, chunk size or nonce prefix must fail as surely as
	// flipping ciphertext or a tag.
	for _, off := range []int{5, 9, 15, 17, 18, hl - 1, hl, hl + 50, hl + 115, len(file) - 1} {
		bad := bytes.Clone(file)
		bad[off] ^= 0x01
		got, _, err := decryptBytes(key, bad)
		if err == nil {
			t.Errorf("flipped bit at offset %d decrypted (%d bytes)", off, len(got))
		}
	}
	appended := append(bytes.Clone(file), 0)
	if _, _, err := decryptBytes(key, appended); !errors.Is(err, ErrStreamAuth) {
		t.Errorf("trailing byte after final chunk: err = %v, want %v", err, ErrStreamAuth)
	}
}

func TestStreamDecryptRejectsWrongKey(t *testing.T) {
	file, _, _, _ := chunked(t, testKey(t))
	got, _, err := decryptBytes(testKey(t), file)
	if !errors.Is(err, ErrStreamAuth) {
		t.Fatalf("wrong key: err = %v, want %v", err, ErrStreamAuth)
	}
	if len(got) != 0 {
		t.Fatalf("wrong key released %d bytes of output", len(got))
	}
}

func TestStreamDecryptRejectsNonCustodyInput(t *testing.T) {
	for name, in := range map[string][]byte{
		"empty":          nil,
		"bad magic":      []byte("PK\x03\x04 a zip file, not ours at all"),
		"future version": append([]byte("CSTY\x02"), make([]byte, 40)...),
		"huge chunk": func() []byte {
			b := encryptBytes(t, testKey(t), []byte("x"), 64)
			binary.BigEndian.PutUint32(b[5:9], MaxChunkSize+1)
			return b
		}(),
		"zero wrapped key": append([]byte("CSTY\x01\x00\x00\x00\x40"), make([]byte, 9)...),
		"short wrapped key": func() []byte {
			b := encryptBytes(t, testKey(t), nil, 64)
			return b[:streamHeaderFixed+3]
		}(),
	} {
		if _, _, err := decryptBytes(testKey(t), in); !errors.Is(err, ErrStreamFormat) {
			t.Errorf("%s: err = %v, want %v", name, err, ErrStreamFormat)
		}
	}
}

func TestStreamEncryptRefusesBadDataKey(t *testing.T) {
	h, err := NewStreamHeader(testWrapped, 64)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := EncryptStream(context.Background(), &out, bytes.NewReader([]byte("x")), h, make([]byte, 16)); err == nil {
		t.Fatal("encrypted with a 16-byte data key; want refusal (AES-256 only)")
	}
	if out.Len() != 0 {
		t.Fatalf("wrote %d bytes before refusing", out.Len())
	}
}

func TestStreamMatchesDocumentedTestVector(t *testing.T) {
	// docs/file-format.md, "Test vector". Data key 00..1f, nonce prefix
	// a0..a6, wrapped key "WK", chunk size 4, plaintext "hello".
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	prefix := [noncePrefixSize]byte{0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6}
	h, err := newStreamHeaderWithPrefix([]byte("WK"), 4, prefix)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := EncryptStream(context.Background(), &out, bytes.NewReader([]byte("hello")), h, key); err != nil {
		t.Fatal(err)
	}
	got := hex.EncodeToString(out.Bytes())
	if got != fileTestVector {
		t.Fatalf("test vector changed:\n got %s\nwant %s", got, fileTestVector)
	}
	pt, _, err := decryptBytes(key, out.Bytes())
	if err != nil || string(pt) != "hello" {
		t.Fatalf("test vector decrypts to %q, %v", pt, err)
	}
}

const fileTestVector = "435354590100000004a0a1a2a3a4a5a60002574b62b470c58614d83bf21e5bb6b52e228bc34f7a1b86adb5b45da51b1cf61dce729574dd94d9"

func TestStreamEncryptionStopsWhenContextIsCancelled(t *testing.T) {
	h, err := NewStreamHeader(testWrapped, 16)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	n, err := EncryptStream(ctx, &out, bytes.NewReader(make([]byte, 1<<20)), h, testKey(t))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want %v", err, context.Canceled)
	}
	if n != 0 || out.Len() > h.Len() {
		t.Fatalf("cancelled encryption read %d bytes and wrote %d", n, out.Len())
	}
}
