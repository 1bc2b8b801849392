package server_test

import (
	"context"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/testenv"
)

// FuzzCryptoRequest sends arbitrary requests to a real custodyd (SoftHSM,
// mTLS) and checks that request validation answers every one of them with a
// caller-side code: never Internal, Unknown or Unavailable, never a crash.
// op selects the RPC. The checked-in corpus in testdata/fuzz runs in every
// `go test`; `make fuzz` explores further.
func FuzzCryptoRequest(f *testing.F) {
	f.Add(byte(0), "enc", []byte{0x01, 0x10}, "tenant", "acme")
	f.Add(byte(1), "enc", []byte{0x02, 0x10, 0, 0, 0, 1}, "", "")
	f.Add(byte(3), "p256", []byte("not a digest"), "k", "v")
	e := testenv.Start(f, testenv.Settings{Mutate: testenv.Grant("relay", []string{"enc", "p256", "mac"}, allOps, true)})
	e.CreateKey(f, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	e.CreateKey(f, "p256", custodyv1.KeyPurpose_SIGN_ECDSA_P256)
	e.CreateKey(f, "mac", custodyv1.KeyPurpose_MAC_HMAC_SHA256)
	c := e.Crypto(f, "relay")
	f.Fuzz(func(t *testing.T, op byte, key string, data []byte, ck, cv string) {
		if !utf8.ValidString(key) || !utf8.ValidString(ck) || !utf8.ValidString(cv) {
			return // protobuf strings must be UTF-8: the client library refuses to send these
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		encCtx := map[string]string{ck: cv}
		var err error
		switch op % 7 {
		case 0:
			_, err = c.Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: key, Ciphertext: data, Context: encCtx})
		case 1:
			_, err = c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: key, WrappedKey: data, Context: encCtx})
		case 2:
			_, err = c.Rewrap(ctx, &custodyv1.RewrapRequest{KeyName: key, WrappedKey: data, Context: encCtx})
		case 3:
			_, err = c.Sign(ctx, &custodyv1.SignRequest{KeyName: key, Input: &custodyv1.SignRequest_Digest{Digest: data}})
		case 4:
			_, err = c.Verify(ctx, &custodyv1.VerifyRequest{KeyName: key, Input: &custodyv1.VerifyRequest_Message{Message: data}, Signature: data})
		case 5:
			_, err = c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: key, WrappedKey: data, RecipientPublicKey: data})
		case 6:
			_, err = c.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: key, Plaintext: data, Context: encCtx})
		}
		switch status.Code(err) {
		case codes.OK, codes.InvalidArgument, codes.PermissionDenied, codes.FailedPrecondition, codes.NotFound:
		default:
			t.Fatalf("op %d key %q: %v", op%7, key, err)
		}
		// No input may look like a device fault to the HSM layer: that would
		// close sessions and start recoveries on a caller's say-so.
		if st := e.D.HSM.Stats(); st.DeviceErrors != 0 {
			t.Fatalf("op %d key %q: caused an hsm device error (%s)", op%7, key, st.LastError)
		}
	})
}
