package client_test

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/custodyhq/custody/client"
)

// FuzzDecryptStream feeds arbitrary bytes to the CSTY stream reader with a
// fixed data key: it must never panic, and it must never release output for
// input it did not produce itself (a valid stream needs the key's tags).
func FuzzDecryptStream(f *testing.F) {
	key := bytes.Repeat([]byte{7}, client.DataKeySize)
	h, err := client.NewStreamHeader(make([]byte, 40), 64)
	if err != nil {
		f.Fatal(err)
	}
	var good bytes.Buffer
	if _, err := client.EncryptStream(context.Background(), &good, bytes.NewReader([]byte("hello, stream; more than one chunk of sixty-four bytes, so two chunks")), h, key); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes())
	f.Add([]byte("CSTY"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, err := client.ReadStreamHeader(r)
		if err != nil {
			return
		}
		var out bytes.Buffer
		n, err := client.DecryptStream(context.Background(), &out, r, h, key)
		if err != nil && n != 0 && !bytes.Equal(data, good.Bytes()) {
			// Chunks that authenticated may have been released before a later
			// chunk failed; they must then be a prefix of the genuine stream's
			// plaintext, which only the genuine input can produce.
			if !bytes.HasPrefix([]byte("hello, stream; more than one chunk of sixty-four bytes, so two chunks"), out.Bytes()) {
				t.Fatalf("released %d bytes that are not genuine plaintext", n)
			}
		}
		_, _ = io.Copy(io.Discard, r)
	})
}
