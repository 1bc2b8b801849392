package main

// The envelope file format written by `custodyctl crypto encrypt` and read by
// `crypto decrypt` is the CSTY stream format of package client (one
// implementation, client/stream.go; docs/file-format.md is its
// specification). These names adapt it to this command's code.

import (
	"context"
	"io"

	"github.com/custodyhq/custody/client"
)

const (
	defaultChunkSize = client.DefaultChunkSize
	dataKeySize      = client.DataKeySize
)

var (
	// errFileAuth: a chunk failed authentication (altered, reordered, wrong
	// key or context).
	errFileAuth = client.ErrStreamAuth
	// errFileTruncated: the file ends before its final chunk.
	errFileTruncated = client.ErrStreamTruncated
)

// fileHeader is a parsed or new file header; wrappedKey is the data key
// to pass to Unwrap.
type fileHeader struct {
	*client.StreamHeader
	wrappedKey []byte
}

func wrapHeader(h *client.StreamHeader, err error) (*fileHeader, error) {
	if err != nil {
		return nil, err
	}
	return &fileHeader{StreamHeader: h, wrappedKey: h.WrappedKey()}, nil
}

// newFileHeader builds a header with a random nonce prefix.
func newFileHeader(wrappedKey []byte, chunkSize int) (*fileHeader, error) {
	return wrapHeader(client.NewStreamHeader(wrappedKey, chunkSize))
}

// readFileHeader reads and checks a header from r, consuming exactly its bytes.
func readFileHeader(r io.Reader) (*fileHeader, error) {
	return wrapHeader(client.ReadStreamHeader(r))
}

// encryptFile writes h's header and then src, encrypted in chunks under
// dataKey, to dst. It returns the number of plaintext bytes read.
func encryptFile(dst io.Writer, src io.Reader, h *fileHeader, dataKey []byte) (int64, error) {
	return client.EncryptStream(context.Background(), dst, src, h.StreamHeader, dataKey)
}

// decryptFile authenticates and decrypts the chunks after h's header; on
// error, discard everything written to dst.
func decryptFile(dst io.Writer, src io.Reader, h *fileHeader, dataKey []byte) (int64, error) {
	return client.DecryptStream(context.Background(), dst, src, h.StreamHeader, dataKey)
}
