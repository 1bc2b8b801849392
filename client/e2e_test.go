package client_test

// End-to-end tests against a real custodyd (SoftHSM token, bbolt store,
// mTLS) run in-process by internal/testenv.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/client"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/testenv"
)

// devKey is the AES-256-GCM key the test custodyd grants to its relay
// (encrypt, decrypt, datakey, unwrap, rewrap; plaintext data keys allowed).
const devKey = daemon.DevKey

func dialAs(t *testing.T, e *testenv.Env, role string) *client.Client {
	t.Helper()
	cp := e.Cert[role]
	c, err := client.Dial(context.Background(), client.Config{
		Addr: e.Addr, CAFile: e.CAFile, CertFile: cp.CertFile, KeyFile: cp.KeyFile,
		ServerName: "localhost", Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestEndToEndSealOpensOnlyWithItsContext(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	c := dialAs(t, e, "relay")
	ctx := context.Background()
	encCtx := map[string]string{"tenant": "acme", "message": "m-1"}

	sealed, err := c.Seal(ctx, devKey, []byte("meet at noon"), encCtx)
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	if bytes.Contains(sealed, []byte("meet at noon")) {
		t.Fatal("sealed message contains the plaintext")
	}
	// A second client has an empty cache: this Open really unwraps.
	reader := dialAs(t, e, "relay")
	pt, err := reader.Open(ctx, devKey, sealed, encCtx)
	if err != nil || string(pt) != "meet at noon" {
		t.Fatalf("open: %q, %v", pt, err)
	}
	other := map[string]string{"tenant": "acme", "message": "m-2"}
	if pt, err := reader.Open(ctx, devKey, sealed, other); err == nil {
		t.Fatalf("opened with another context: %q", pt)
	}
}

func TestEndToEndConversationUnwrapsOnceForManyMessages(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	writer := dialAs(t, e, "relay")
	ctx := context.Background()
	encCtx := map[string]string{"tenant": "acme"}
	s, err := writer.SealerFor(ctx, devKey, "conversation-1", encCtx)
	if err != nil {
		t.Fatalf("sealer: %v", err)
	}
	defer s.Close()
	var msgs [][]byte
	for i := range 5 {
		m, err := s.Seal([]byte{'m', byte('0' + i)})
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	// The reader's first Open unwraps; stopping custodyd proves the
	// others come from the cache.
	reader := dialAs(t, e, "relay")
	if pt, err := reader.Open(ctx, devKey, msgs[0], encCtx); err != nil || string(pt) != "m0" {
		t.Fatalf("open first message: %q, %v", pt, err)
	}
	e.Stop(t)
	for i, m := range msgs[1:] {
		pt, err := reader.Open(ctx, devKey, m, encCtx)
		if err != nil || string(pt) != string([]byte{'m', byte('1' + i)}) {
			t.Fatalf("open message %d with custodyd stopped: %q, %v", i+1, pt, err)
		}
	}
	// A message of another conversation is not in the cache and cannot be
	// opened without custodyd.
	s2, err := writer.SealerFor(ctx, devKey, "conversation-2", encCtx)
	if err == nil {
		s2.Close()
		t.Fatal("SealerFor succeeded with custodyd stopped")
	}
}

func TestEndToEndStreamRoundTripsAndDetectsTruncation(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	c := dialAs(t, e, "relay")
	ctx := context.Background()
	encCtx := map[string]string{"host": "db1"}
	data := make([]byte, 3*client.DefaultChunkSize+123)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	n, err := c.SealStream(ctx, devKey, encCtx, bytes.NewReader(data), &file)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("seal stream: %d bytes, %v", n, err)
	}
	var out bytes.Buffer
	if _, err := dialAs(t, e, "relay").OpenStream(ctx, devKey, encCtx, bytes.NewReader(file.Bytes()), &out); err != nil {
		t.Fatalf("open stream: %v", err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatal("stream round trip changed the data")
	}
	chunk := client.DefaultChunkSize + 16
	cut := file.Bytes()[:file.Len()-(123+16)] // drop the final chunk
	_, err = c.OpenStream(ctx, devKey, encCtx, bytes.NewReader(cut), &bytes.Buffer{})
	if !errors.Is(err, client.ErrStreamTruncated) {
		t.Fatalf("stream without its final chunk: err = %v, want %v (chunk %d)", err, client.ErrStreamTruncated, chunk)
	}
}

func TestEndToEndOperatorCannotSeal(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	c := dialAs(t, e, "operator")
	_, err := c.Seal(context.Background(), devKey, []byte("x"), nil)
	if code := status.Code(err); code != codes.PermissionDenied {
		t.Fatalf("operator Seal: code %v (%v), want PERMISSION_DENIED", code, err)
	}
}

func TestEndToEndKeyTransportToRelayKey(t *testing.T) {
	priv, err := client.GenerateRelayKey(client.MinRelayKeyBits)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := client.RelayPublicKeyDER(priv)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(pub)
	e := testenv.Start(t, testenv.Settings{Mutate: func(_ *testenv.Env, cfg *config.Config) {
		for i := range cfg.Grants {
			cfg.Grants[i].RecipientKeys = append(cfg.Grants[i].RecipientKeys, hex.EncodeToString(digest[:]))
		}
	}})
	c := dialAs(t, e, "relay")
	ctx := context.Background()
	encCtx := map[string]string{"tenant": "acme"}
	gen, err := c.Crypto().GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{
		KeyName: devKey, Context: encCtx, RecipientPublicKey: pub,
	})
	if err != nil {
		t.Fatalf("generate data key for recipient: %v", err)
	}
	if len(gen.GetPlaintext()) != 0 {
		t.Fatal("custodyd returned a plaintext data key although a recipient was given")
	}
	dk, err := client.DecryptTransported(priv, gen.GetRecipientWrappedKey(), gen.GetRecipientWrapping())
	if err != nil {
		t.Fatalf("decrypt transported key (%s): %v", gen.GetRecipientWrapping(), err)
	}
	defer clear(dk)
	// The same data key, unwrapped in plaintext through custodyd, matches.
	uw, err := c.Crypto().Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: devKey, WrappedKey: gen.GetWrappedKey(), Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(uw.GetPlaintext(), dk) {
		t.Fatal("transported data key differs from the one custodyd wrapped")
	}
}

func TestDataKeysStoresAndFetchesByIdWithTheRetryPolicy(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	c := dialAs(t, e, "relay")
	ctx := context.Background()
	encCtx := map[string]string{"tenant": "acme"}
	if _, err := c.DataKeys().StoreDataKey(ctx, &custodyv1.StoreDataKeyRequest{KeyName: devKey, Id: "conv-42", Context: encCtx,
		Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}}); err != nil {
		t.Fatalf("store: %v", err)
	}
	got, err := c.DataKeys().FetchDataKey(ctx, &custodyv1.FetchDataKeyRequest{KeyName: devKey, Id: "conv-42", Context: encCtx})
	if err != nil || len(got.GetPlaintext()) != client.DataKeySize {
		t.Fatalf("fetch: %v (%d bytes)", err, len(got.GetPlaintext()))
	}
	_, err = c.DataKeys().FetchDataKey(ctx, &custodyv1.FetchDataKeyRequest{KeyName: devKey, Id: "conv-42", Context: map[string]string{"tenant": "other"}})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("fetch with another context: %v, want NOT_FOUND (ids are scoped by context)", err)
	}
}
