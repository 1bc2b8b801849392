package client

// The CSTY stream format: envelope encryption of a payload of any size,
// written by SealStream and `custodyctl crypto encrypt`, read by OpenStream
// and `custodyctl crypto decrypt`; docs/file-format.md is its specification.
//
// A stream is a header followed by one or more chunks. Each chunk is
// AES-256-GCM under a fresh data key (from GenerateDataKey), with the STREAM
// nonce construction: nonce = prefix(7) || counter(4, big-endian) || last(1),
// so chunks cannot be reordered, dropped, duplicated or truncated away
// undetected, and the whole header is every chunk's additional data, so the
// header cannot be altered either. Non-final chunks carry exactly chunkSize
// plaintext bytes; the final chunk carries 0..chunkSize and has last = 1.
// Because the data key is used for one stream only, a counter nonce never
// repeats under a key; the random prefix guards against a reused key anyway.

import (
	"bufio"
	"context"
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
	streamMagic   = "CSTY"
	streamVersion = 1
	// DefaultChunkSize is the plaintext size of every non-final chunk that
	// SealStream writes.
	DefaultChunkSize = 64 << 10
	// MaxChunkSize bounds the chunk size a stream header may declare, and so
	// the allocation a hostile header can cause.
	MaxChunkSize = 16 << 20
	// DataKeySize is the size of a Custody data key: AES-256.
	DataKeySize = 32

	noncePrefixSize   = 7
	streamHeaderFixed = len(streamMagic) + 1 + 4 + noncePrefixSize + 2
	maxWrappedKey     = math.MaxUint16
)

var (
	// ErrStreamFormat means the input is not a Custody encrypted stream this
	// version understands (bad magic, version or header fields).
	ErrStreamFormat = errors.New("not a custody encrypted file")
	// ErrStreamAuth means a chunk failed authentication: the stream was
	// altered, reordered, or is being decrypted with the wrong data key.
	ErrStreamAuth = errors.New("authentication failed: file is corrupt or was altered, or the key or context is wrong")
	// ErrStreamTruncated means the stream ends before its final chunk.
	ErrStreamTruncated = errors.New("file is truncated")
)

// StreamHeader is the header of a CSTY stream: chunk size, nonce prefix and
// the wrapped data key. Its exact bytes are every chunk's additional data.
type StreamHeader struct {
	chunkSize   uint32
	noncePrefix [noncePrefixSize]byte
	wrappedKey  []byte
	raw         []byte // the header bytes exactly as read or written
}

// NewStreamHeader builds a header for wrappedKey (as returned by
// GenerateDataKey) with the given chunk size and a random nonce prefix.
func NewStreamHeader(wrappedKey []byte, chunkSize int) (*StreamHeader, error) {
	var prefix [noncePrefixSize]byte
	if _, err := rand.Read(prefix[:]); err != nil {
		return nil, fmt.Errorf("nonce prefix: %w", err)
	}
	return newStreamHeaderWithPrefix(wrappedKey, chunkSize, prefix)
}

// newStreamHeaderWithPrefix builds a header with the given nonce prefix;
// only test vectors pass a fixed one.
func newStreamHeaderWithPrefix(wrappedKey []byte, chunkSize int, prefix [noncePrefixSize]byte) (*StreamHeader, error) {
	if chunkSize < 1 || chunkSize > MaxChunkSize {
		return nil, fmt.Errorf("%w: chunk size %d outside 1..%d", ErrInvalidArgument, chunkSize, MaxChunkSize)
	}
	if len(wrappedKey) == 0 || len(wrappedKey) > maxWrappedKey {
		return nil, fmt.Errorf("%w: wrapped key length %d outside 1..%d", ErrInvalidArgument, len(wrappedKey), maxWrappedKey)
	}
	h := &StreamHeader{chunkSize: uint32(chunkSize), noncePrefix: prefix}
	raw := make([]byte, 0, streamHeaderFixed+len(wrappedKey))
	raw = append(raw, streamMagic...)
	raw = append(raw, streamVersion)
	raw = binary.BigEndian.AppendUint32(raw, h.chunkSize)
	raw = append(raw, h.noncePrefix[:]...)
	raw = binary.BigEndian.AppendUint16(raw, uint16(len(wrappedKey)))
	raw = append(raw, wrappedKey...)
	h.raw = raw
	h.wrappedKey = raw[streamHeaderFixed:]
	return h, nil
}

// ReadStreamHeader reads and checks a header from r, consuming exactly its
// bytes, so that r is left at the first chunk.
func ReadStreamHeader(r io.Reader) (*StreamHeader, error) {
	fixed := make([]byte, streamHeaderFixed)
	if _, err := io.ReadFull(r, fixed); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: header too short", ErrStreamFormat)
		}
		return nil, fmt.Errorf("read header: %w", err)
	}
	if string(fixed[:4]) != streamMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrStreamFormat)
	}
	if fixed[4] != streamVersion {
		return nil, fmt.Errorf("%w: unsupported version %d", ErrStreamFormat, fixed[4])
	}
	h := &StreamHeader{chunkSize: binary.BigEndian.Uint32(fixed[5:9])}
	if h.chunkSize < 1 || h.chunkSize > MaxChunkSize {
		return nil, fmt.Errorf("%w: chunk size %d outside 1..%d", ErrStreamFormat, h.chunkSize, MaxChunkSize)
	}
	copy(h.noncePrefix[:], fixed[9:9+noncePrefixSize])
	n := int(binary.BigEndian.Uint16(fixed[9+noncePrefixSize:]))
	if n == 0 {
		return nil, fmt.Errorf("%w: empty wrapped key", ErrStreamFormat)
	}
	h.raw = make([]byte, streamHeaderFixed+n)
	copy(h.raw, fixed)
	if _, err := io.ReadFull(r, h.raw[streamHeaderFixed:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: header too short", ErrStreamFormat)
		}
		return nil, fmt.Errorf("read header: %w", err)
	}
	h.wrappedKey = h.raw[streamHeaderFixed:]
	return h, nil
}

// WrappedKey returns the wrapped data key stored in the header; pass it to
// Unwrap with the same key name and encryption context. Do not modify it.
func (h *StreamHeader) WrappedKey() []byte { return h.wrappedKey }

// ChunkSize returns the plaintext size of every non-final chunk.
func (h *StreamHeader) ChunkSize() int { return int(h.chunkSize) }

// Len returns the encoded size of the header in bytes.
func (h *StreamHeader) Len() int { return len(h.raw) }

func (h *StreamHeader) nonce(counter uint32, last bool) []byte {
	n := make([]byte, 0, 12)
	n = append(n, h.noncePrefix[:]...)
	n = binary.BigEndian.AppendUint32(n, counter)
	if last {
		return append(n, 1)
	}
	return append(n, 0)
}

// newGCM returns AES-256-GCM under dataKey, refusing any other key size.
func newGCM(dataKey []byte) (cipher.AEAD, error) {
	if len(dataKey) != DataKeySize {
		return nil, fmt.Errorf("%w: data key is %d bytes, want %d", ErrInvalidArgument, len(dataKey), DataKeySize)
	}
	block, err := aes.NewCipher(dataKey)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	return cipher.NewGCM(block)
}

// EncryptStream writes h's header and then src, encrypted in chunks under
// dataKey, to dst. It returns the number of plaintext bytes read. ctx is
// checked between chunks, so cancelling it stops a long encryption.
func EncryptStream(ctx context.Context, dst io.Writer, src io.Reader, h *StreamHeader, dataKey []byte) (int64, error) {
	aead, err := newGCM(dataKey)
	if err != nil {
		return 0, err
	}
	if _, err := dst.Write(h.raw); err != nil {
		return 0, fmt.Errorf("write header: %w", err)
	}
	br := bufio.NewReaderSize(src, int(h.chunkSize)+1)
	buf := make([]byte, h.chunkSize, int(h.chunkSize)+aead.Overhead())
	defer clear(buf[:cap(buf)])
	var total int64
	for counter := uint32(0); ; counter++ {
		if err := ctx.Err(); err != nil {
			return total, err
		}
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
			return total, fmt.Errorf("%w: input too large for one stream", ErrInvalidArgument)
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

// DecryptStream reads the chunks that follow h's header from src,
// authenticates each and writes its plaintext to dst. It returns the number
// of plaintext bytes written. Chunks are written only after they
// authenticate, but a stream that is truncated or altered later on fails only
// when that point is reached: on error, discard everything written to dst.
func DecryptStream(ctx context.Context, dst io.Writer, src io.Reader, h *StreamHeader, dataKey []byte) (int64, error) {
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
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := io.ReadFull(br, buf)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return total, fmt.Errorf("read input: %w", err)
		}
		if n < aead.Overhead() {
			// Every chunk, even an empty final one, has a tag: the final
			// chunk is missing (or cut inside its tag).
			return total, ErrStreamTruncated
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
					return total, ErrStreamTruncated
				}
			}
			return total, ErrStreamAuth
		}
		if _, err := dst.Write(pt); err != nil {
			return total, fmt.Errorf("write output: %w", err)
		}
		total += int64(len(pt))
		if last {
			return total, nil
		}
		if counter == math.MaxUint32 {
			return total, ErrStreamAuth
		}
	}
}
