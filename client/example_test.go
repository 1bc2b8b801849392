package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/client"
)

// A relay connects with its own certificate; the CA file is the one that
// issued custodyd's certificate.
func ExampleDial() {
	c, err := client.Dial(context.Background(), client.Config{
		Addr:     "custodyd.internal:8443",
		CAFile:   "/etc/custody/ca.pem",
		CertFile: "/etc/custody/relay.pem",
		KeyFile:  "/etc/custody/relay-key.pem",
		Timeout:  5 * time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// Seal one message under its own data key and open it again. Both calls go
// to custodyd (GenerateDataKey, Unwrap) and are audited there with the
// encryption context.
func ExampleClient_Seal() {
	var c *client.Client // from client.Dial
	ctx := context.Background()
	encCtx := map[string]string{"tenant": "acme", "message": "m-42"}
	sealed, err := c.Seal(ctx, "messages", []byte("hello"), encCtx)
	if err != nil {
		var be *client.BudgetError
		if errors.As(err, &be) {
			log.Printf("budget spent; retry after %s", be.RetryAfter)
		}
		log.Fatal(err)
	}
	plaintext, err := c.Open(ctx, "messages", sealed, encCtx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", plaintext)
}

// A conversation costs one data key; readers unwrap it once and then hit
// the cache.
func ExampleClient_SealerFor() {
	var c *client.Client // from client.Dial
	ctx := context.Background()
	encCtx := map[string]string{"tenant": "acme"}
	s, err := c.SealerFor(ctx, "messages", "conversation-7", encCtx)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	for _, msg := range []string{"hi", "how are you?"} {
		sealed, err := s.Seal([]byte(msg))
		if errors.Is(err, client.ErrSealerExhausted) {
			break // ask SealerFor for a new data key
		}
		if err != nil {
			log.Fatal(err)
		}
		pt, err := c.Open(ctx, "messages", sealed, encCtx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s\n", pt)
	}
}

// Encrypt a file of any size in chunks; decrypting needs the same key name
// and context.
func ExampleClient_SealStream() {
	var c *client.Client // from client.Dial
	ctx := context.Background()
	in, err := os.Open("dump.sql")
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create("dump.sql.csty")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.SealStream(ctx, "backups", map[string]string{"host": "db1"}, in, out); err != nil {
		log.Fatal(err)
	}
	if err := out.Close(); err != nil {
		log.Fatal(err)
	}
}

// Key transport: custodyd wraps the data key to the relay's public key
// inside the HSM, and only the relay can recover it.
func ExampleClient_Crypto_keyTransport() {
	var c *client.Client // from client.Dial
	priv, err := client.LoadRelayKey("/etc/custody/transport-key.pem")
	if err != nil {
		log.Fatal(err)
	}
	pub, err := client.RelayPublicKeyDER(priv)
	if err != nil {
		log.Fatal(err)
	}
	resp, err := c.Crypto().GenerateDataKey(context.Background(), &custodyv1.GenerateDataKeyRequest{
		KeyName: "messages", RecipientPublicKey: pub,
	})
	if err != nil {
		log.Fatal(err)
	}
	dataKey, err := client.DecryptTransported(priv, resp.GetRecipientWrappedKey(), resp.GetRecipientWrapping())
	if err != nil {
		log.Fatal(err)
	}
	defer clear(dataKey)
}

// DecryptTransported undoes the RSA-OAEP wrapping that custodyd's HSM
// applies to a data key sent to a relay.
func ExampleDecryptTransported() {
	priv, err := client.GenerateRelayKey(3072)
	if err != nil {
		log.Fatal(err)
	}
	dataKey := bytes.Repeat([]byte{7}, client.DataKeySize)
	// What the HSM does with recipient_public_key:
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &priv.PublicKey, dataKey, nil)
	if err != nil {
		log.Fatal(err)
	}
	got, err := client.DecryptTransported(priv, wrapped, client.WrappingRSAOAEPSHA256)
	if err != nil {
		log.Fatal(err)
	}
	defer clear(got)
	fmt.Println(len(got), bytes.Equal(got, dataKey))
	// Output: 32 true
}

// The CSTY stream format can be written and read with a data key in hand;
// SealStream and OpenStream fetch and unwrap that key through custodyd.
func ExampleEncryptStream() {
	dataKey := bytes.Repeat([]byte{1}, client.DataKeySize)
	h, err := client.NewStreamHeader([]byte("wrapped-key-from-custodyd"), 4)
	if err != nil {
		log.Fatal(err)
	}
	var file bytes.Buffer
	n, err := client.EncryptStream(context.Background(), &file, bytes.NewReader([]byte("hello, custody")), h, dataKey)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("encrypted", n, "bytes into", file.Len(), "bytes")

	r := bytes.NewReader(file.Bytes())
	rh, err := client.ReadStreamHeader(r)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("wrapped key %q, chunk size %d\n", rh.WrappedKey(), rh.ChunkSize())
	var out bytes.Buffer
	if _, err := client.DecryptStream(context.Background(), &out, r, rh, dataKey); err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.String())
	// Output:
	// encrypted 14 bytes into 121 bytes
	// wrapped key "wrapped-key-from-custodyd", chunk size 4
	// hello, custody
}
