package main

// The envelope file format written by `custodyctl crypto encrypt` and read by
// `crypto decrypt`; docs/file-format.md is its specification.
//
// A file is a header followed by one or more chunks. Each chunk is
// AES-256-GCM under a fresh data key (from GenerateDataKey), with the STREAM
// nonce construction: nonce = prefix(7) || counter(4, big-endian) || last(1),
// so chunks cannot be reordered, dropped, duplicated or truncated away
// undetected, and the whole header is every chunk's additional data, so the
// header cannot be altered either. Non-final chunks carry exactly chunkSize
// plaintext bytes; the final chunk carries 0..chunkSize and has last = 1.
// Because the data key is used for one file only, a counter nonce never
// repeats under a key; the random prefix guards against a reused key anyway.

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

const (
	fileMagic        = "CSTY"
	fileVersion      = 1
	defaultChunkSize = 64 << 10
	maxChunkSize     = 16 << 20 // bounds the allocation a hostile header can cause
	noncePrefixSize  = 7
	dataKeySize      = 32
	fileHeaderFixed  = len(fileMagic) + 1 + 4 + noncePrefixSize + 2
	maxWrappedKey    = math.MaxUint16
)

var (
	// errFileFormat means the input is not a Custody envelope file this
	// version understands (bad magic, version or header fields).
	errFileFormat = errors.New("not a custody encrypted file")
	// errFileAuth means a chunk failed authentication: the file was altered,
	// reordered, or is being decrypted with the wrong data key or context.
	errFileAuth = errors.New("authentication failed: file is corrupt or was altered, or the key or context is wrong")
	// errFileTruncated means the file ends before its final chunk.
	errFileTruncated = errors.New("file is truncated")
)

// fileHeader is the parsed header of an envelope file.
type fileHeader struct {
	chunkSize   uint32
	noncePrefix [noncePrefixSize]byte
	wrappedKey  []byte
	raw         []byte // the header bytes exactly as read or written; every chunk's AAD
}

// newFileHeader builds a header with a random nonce prefix.
func newFileHeader(wrappedKey []byte, chunkSize int) (*fileHeader, error) {
	var prefix [noncePrefixSize]byte
	if _, err := rand.Read(prefix[:]); err != nil {
		return nil, fmt.Errorf("nonce prefix: %w", err)
	}
	return newFileHeaderWithPrefix(wrappedKey, chunkSize, prefix)
}

// newFileHeaderWithPrefix builds a header with the given nonce prefix; only
// test vectors pass a fixed one.
func newFileHeaderWithPrefix(wrappedKey []byte, chunkSize int, prefix [noncePrefixSize]byte) (*fileHeader, error) {
	if chunkSize < 1 || chunkSize > maxChunkSize {
		return nil, fmt.Errorf("chunk size %d outside 1..%d", chunkSize, maxChunkSize)
	}
	if len(wrappedKey) == 0 || len(wrappedKey) > maxWrappedKey {
		return nil, fmt.Errorf("wrapped key length %d outside 1..%d", len(wrappedKey), maxWrappedKey)
	}
	h := &fileHeader{chunkSize: uint32(chunkSize), wrappedKey: wrappedKey, noncePrefix: prefix}
	raw := make([]byte, 0, fileHeaderFixed+len(wrappedKey))
	raw = append(raw, fileMagic...)
	raw = append(raw, fileVersion)
	raw = binary.BigEndian.AppendUint32(raw, h.chunkSize)
	raw = append(raw, h.noncePrefix[:]...)
	raw = binary.BigEndian.AppendUint16(raw, uint16(len(wrappedKey)))
	raw = append(raw, wrappedKey...)
	h.raw = raw
	return h, nil
}

// readFileHeader reads and checks a header from r, consuming exactly its bytes.
func readFileHeader(r io.Reader) (*fileHeader, error) {
	fixed := make([]byte, fileHeaderFixed)
	if _, err := io.ReadFull(r, fixed); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: header too short", errFileFormat)
		}
		return nil, fmt.Errorf("read header: %w", err)
	}
	if string(fixed[:4]) != fileMagic {
		return nil, fmt.Errorf("%w: bad magic", errFileFormat)
	}
	if fixed[4] != fileVersion {
		return nil, fmt.Errorf("%w: unsupported version %d", errFileFormat, fixed[4])
	}
	h := &fileHeader{chunkSize: binary.BigEndian.Uint32(fixed[5:9])}
	if h.chunkSize < 1 || h.chunkSize > maxChunkSize {
		return nil, fmt.Errorf("%w: chunk size %d outside 1..%d", errFileFormat, h.chunkSize, maxChunkSize)
	}
	copy(h.noncePrefix[:], fixed[9:9+noncePrefixSize])
	n := int(binary.BigEndian.Uint16(fixed[9+noncePrefixSize:]))
	if n == 0 {
		return nil, fmt.Errorf("%w: empty wrapped key", errFileFormat)
	}
	h.raw = make([]byte, fileHeaderFixed+n)
	copy(h.raw, fixed)
	if _, err := io.ReadFull(r, h.raw[fileHeaderFixed:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: header too short", errFileFormat)
		}
		return nil, fmt.Errorf("read header: %w", err)
	}
	h.wrappedKey = h.raw[fileHeaderFixed:]
	return h, nil
}

func (h *fileHeader) nonce(counter uint32, last bool) []byte {
	n := make([]byte, 0, 12)
	n = append(n, h.noncePrefix[:]...)
	n = binary.BigEndian.AppendUint32(n, counter)
	if last {
		return append(n, 1)
	}
	return append(n, 0)
}

func newGCM(dataKey []byte) (cipher.AEAD, error) {
	if len(dataKey) != dataKeySize {
		return nil, fmt.Errorf("data key is %d bytes, want %d", len(dataKey), dataKeySize)
	}
	block, err := aes.NewCipher(dataKey)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	return cipher.NewGCM(block)
}

// encryptFile writes h's header and then src, encrypted in chunks under
// dataKey, to dst. It returns the number of plaintext bytes read.
func encryptFile(dst io.Writer, src io.Reader, h *fileHeader, dataKey []byte) (int64, error) {
	aead, err := newGCM(dataKey)
	if err != nil {
		return 0, err
	}
	if _, err := dst.Write(h.raw); err != nil {
		return 0, fmt.Errorf("write header: %w", err)
	}
	br := bufio.NewReaderSize(src, int(h.chunkSize)+1)
	buf := make([]byte, h.chunkSize, int(h.chunkSize)+aead.Overhead())
	defer clear(buf)
	var total int64
	for counter := uint32(0); ; counter++ {
		n, err := io.ReadFull(br, buf)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return total, fmt.Errorf("read input: %w", err)
		}
		total += int64(n)
		last := n < len(buf)
		if !last {
			// A full chunk is final only when nothing follows it.
			if _, perr := br.Peek(1); perr != nil {
				if !errors.Is(perr, io.EOF) {
					return total, fmt.Errorf("read input: %w", perr)
				}
				last = true
			}
		}
		if !last && counter == math.MaxUint32 {
			return total, errors.New("input too large for one file")
		}
		ct := aead.Seal(buf[:0], h.nonce(counter, last), buf[:n], h.raw)
		if _, err := dst.Write(ct); err != nil {
			return total, fmt.Errorf("write output: %w", err)
		}
		if last {
			return total, nil
		}
		buf = buf[:h.chunkSize]
	}
}

// decryptFile reads chunks that follow h's header from src, authenticates
// each and writes its plaintext to dst. Chunks are written only after they
// authenticate, but a file that is truncated or altered later on fails only
// when that point is reached: on error, discard everything written to dst.
func decryptFile(dst io.Writer, src io.Reader, h *fileHeader, dataKey []byte) (int64, error) {
	aead, err := newGCM(dataKey)
	if err != nil {
		return 0, err
	}
	full := int(h.chunkSize) + aead.Overhead()
	br := bufio.NewReaderSize(src, full+1)
	buf := make([]byte, full)
	// Plaintext goes to its own buffer: a failed in-place Open would wipe
	// the ciphertext needed for the truncation probe below.
	ptBuf := make([]byte, h.chunkSize)
	defer clear(ptBuf)
	var total int64
	for counter := uint32(0); ; counter++ {
		n, err := io.ReadFull(br, buf)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return total, fmt.Errorf("read input: %w", err)
		}
		if n < aead.Overhead() {
			// Every chunk, even an empty final one, has a tag: the final
			// chunk is missing (or cut inside its tag).
			return total, errFileTruncated
		}
		last := n < full
		if !last {
			if _, perr := br.Peek(1); perr != nil {
				if !errors.Is(perr, io.EOF) {
					return total, fmt.Errorf("read input: %w", perr)
				}
				last = true
			}
		}
		pt, oerr := aead.Open(ptBuf[:0], h.nonce(counter, last), buf[:n], h.raw)
		if oerr != nil {
			if last && n == full {
				// A full chunk at end of input that opens as non-final means
				// the chunks after it were cut off.
				if _, terr := aead.Open(ptBuf[:0], h.nonce(counter, false), buf[:n], h.raw); terr == nil {
					return total, errFileTruncated
				}
			}
			return total, errFileAuth
		}
		if _, err := dst.Write(pt); err != nil {
			return total, fmt.Errorf("write output: %w", err)
		}
		total += int64(len(pt))
		if last {
			return total, nil
		}
		if counter == math.MaxUint32 {
			return total, errFileAuth
		}
	}
}
