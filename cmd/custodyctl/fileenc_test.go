package main

import (
	"bytes"
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
	k := make([]byte, dataKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

var testWrapped = []byte("wrapped-data-key-envelope-from-custodyd")

func encryptBytes(t *testing.T, key, plaintext []byte, chunkSize int) []byte {
	t.Helper()
	h, err := newFileHeader(testWrapped, chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	n, err := encryptFile(&out, bytes.NewReader(plaintext), h, key)
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	if n != int64(len(plaintext)) {
		t.Fatalf("encrypt read %d bytes, want %d", n, len(plaintext))
	}
	return out.Bytes()
}

func decryptBytes(key, file []byte) ([]byte, *fileHeader, error) {
	r := bytes.NewReader(file)
	h, err := readFileHeader(r)
	if err != nil {
		return nil, nil, err
	}
	var out bytes.Buffer
	n, err := decryptFile(&out, r, h, key)
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

func TestFileRoundTripsAcrossChunkBoundaries(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int
		chunks int
	}{
		{"empty", 0, 1},
		{"one byte", 1, 1},
		{"exactly one chunk", defaultChunkSize, 1},
		{"one chunk plus one byte", defaultChunkSize + 1, 2},
		{"1 MiB plus 7 bytes", 1<<20 + 7, 17},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := testKey(t)
			pt := randomBytes(t, tc.size)
			file := encryptBytes(t, key, pt, defaultChunkSize)

			wantLen := fileHeaderFixed + len(testWrapped) + tc.size + tc.chunks*16
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
			if !bytes.Equal(h.wrappedKey, testWrapped) || h.chunkSize != defaultChunkSize {
				t.Errorf("header read back as chunk %d, wrapped %q", h.chunkSize, h.wrappedKey)
			}
		})
	}
}

func TestFileHeaderLayoutMatchesDocumentedFormat(t *testing.T) {
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
	return encryptBytes(t, key, pt, cs), pt, fileHeaderFixed + len(testWrapped), cs + 16
}

func TestFileDecryptDetectsTruncationAtChunkBoundary(t *testing.T) {
	key := testKey(t)
	file, _, hl, cl := chunked(t, key)
	for _, keep := range []int{0, 1, 2, 3} {
		cut := file[:hl+keep*cl]
		if _, _, err := decryptBytes(key, cut); !errors.Is(err, errFileTruncated) {
			t.Errorf("file cut after %d full chunks: err = %v, want %v", keep, err, errFileTruncated)
		}
	}
}

func TestFileDecryptDetectsTruncationInsideChunk(t *testing.T) {
	key := testKey(t)
	file, _, _, _ := chunked(t, key)
	for _, drop := range []int{1, 16, 26, 27} {
		_, _, err := decryptBytes(key, file[:len(file)-drop])
		if !errors.Is(err, errFileAuth) && !errors.Is(err, errFileTruncated) {
			t.Errorf("file missing its last %d bytes decrypted: err = %v", drop, err)
		}
	}
}

func TestFileDecryptDetectsReorderedChunks(t *testing.T) {
	key := testKey(t)
	file, _, hl, cl := chunked(t, key)
	swapped := bytes.Clone(file)
	copy(swapped[hl:hl+cl], file[hl+cl:hl+2*cl])
	copy(swapped[hl+cl:hl+2*cl], file[hl:hl+cl])
	if _, _, err := decryptBytes(key, swapped); !errors.Is(err, errFileAuth) {
		t.Fatalf("swapped chunks 0 and 1: err = %v, want %v", err, errFileAuth)
	}
	// Duplicating a chunk in place of a later one is reordering too.
	dup := bytes.Clone(file)
	copy(dup[hl+2*cl:hl+3*cl], file[hl+cl:hl+2*cl])
	if _, _, err := decryptBytes(key, dup); !errors.Is(err, errFileAuth) {
		t.Fatalf("duplicated chunk 1 over chunk 2: err = %v, want %v", err, errFileAuth)
	}
}

func TestFileDecryptDetectsTamperingAnywhere(t *testing.T) {
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
	if _, _, err := decryptBytes(key, appended); !errors.Is(err, errFileAuth) {
		t.Errorf("trailing byte after final chunk: err = %v, want %v", err, errFileAuth)
	}
}

func TestFileDecryptRejectsWrongKey(t *testing.T) {
	file, _, _, _ := chunked(t, testKey(t))
	got, _, err := decryptBytes(testKey(t), file)
	if !errors.Is(err, errFileAuth) {
		t.Fatalf("wrong key: err = %v, want %v", err, errFileAuth)
	}
	if len(got) != 0 {
		t.Fatalf("wrong key released %d bytes of output", len(got))
	}
}

func TestFileDecryptRejectsNonCustodyInput(t *testing.T) {
	for name, in := range map[string][]byte{
		"empty":          nil,
		"bad magic":      []byte("PK\x03\x04 a zip file, not ours at all"),
		"future version": append([]byte("CSTY\x02"), make([]byte, 40)...),
		"huge chunk": func() []byte {
			b := encryptBytes(t, testKey(t), []byte("x"), 64)
			binary.BigEndian.PutUint32(b[5:9], maxChunkSize+1)
			return b
		}(),
		"zero wrapped key": append([]byte("CSTY\x01\x00\x00\x00\x40"), make([]byte, 9)...),
		"short wrapped key": func() []byte {
			b := encryptBytes(t, testKey(t), nil, 64)
			return b[:fileHeaderFixed+3]
		}(),
	} {
		if _, _, err := decryptBytes(testKey(t), in); !errors.Is(err, errFileFormat) {
			t.Errorf("%s: err = %v, want %v", name, err, errFileFormat)
		}
	}
}

func TestFileEncryptRefusesBadDataKey(t *testing.T) {
	h, err := newFileHeader(testWrapped, 64)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := encryptFile(&out, bytes.NewReader([]byte("x")), h, make([]byte, 16)); err == nil {
		t.Fatal("encrypted with a 16-byte data key; want refusal (AES-256 only)")
	}
	if out.Len() != 0 {
		t.Fatalf("wrote %d bytes before refusing", out.Len())
	}
}

func TestFileMatchesDocumentedTestVector(t *testing.T) {
	// docs/file-format.md, "Test vector". Data key 00..1f, nonce prefix
	// a0..a6, wrapped key "WK", chunk size 4, plaintext "hello".
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	prefix := [noncePrefixSize]byte{0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6}
	h, err := newFileHeaderWithPrefix([]byte("WK"), 4, prefix)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := encryptFile(&out, bytes.NewReader([]byte("hello")), h, key); err != nil {
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
