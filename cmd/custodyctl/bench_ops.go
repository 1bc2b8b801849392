package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/client"
)

// benchOps are the operations `custodyctl bench` measures, in the order
// --help lists them.
//
// datakey and unwrap take the path of a data key returned in plaintext
// (custodyd seals it: envelope 0x03, no HSM key object); datakey-kwp and
// unwrap-kwp the path of one that is not (without_plaintext: AES-KWP inside
// the HSM, envelope 0x02), the one key transport uses too.
var benchOps = []string{"encrypt", "decrypt", "datakey", "unwrap", "datakey-kwp", "unwrap-kwp", "sign", "mac", "batch-decrypt", "decrypt-coalesced"}

// benchKeyClass is the kind of key an operation needs, as it appears in the
// bench key names (PREFIX + class + "-" + index).
type benchKeyClass struct {
	name    string
	purpose custodyv1.KeyPurpose
}

var (
	benchAES  = benchKeyClass{"aes", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM}
	benchP256 = benchKeyClass{"p256", custodyv1.KeyPurpose_SIGN_ECDSA_P256}
	benchHMAC = benchKeyClass{"hmac", custodyv1.KeyPurpose_MAC_HMAC_SHA256}
)

func benchClassOf(op string) benchKeyClass {
	switch op {
	case "sign":
		return benchP256
	case "mac":
		return benchHMAC
	}
	return benchAES
}

// benchKeyNames returns the names of the n keys an operation spreads over.
func benchKeyNames(prefix string, class benchKeyClass, n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s%s-%d", prefix, class.name, i)
	}
	return names
}

// defaultBenchContext is the encryption context every bench request
// carries unless --context says otherwise, so that the server does the AAD
// work a relay's request would cost.
var defaultBenchContext = []string{"tenant=bench"}

// benchCall is one closed-loop request. n is the worker's iteration, used to
// spread requests over the keys. It returns how many operations succeeded
// (items, for a batch call), the codes of failed batch items, and the error
// of the call itself.
type benchCall func(ctx context.Context, c custodyv1.CryptoServiceClient, worker int, n uint64) (ok int, itemErrs []codes.Code, err error)

// benchWorkload is an operation ready to run: its inputs are prepared (for
// decrypt, one ciphertext per key) before the clock starts.
type benchWorkload struct {
	call benchCall
}

// prepareBench builds the workload for op over keys, using clients for any
// preparatory requests (spread over every connection so that each is warm
// before the measured run).
//
// coalesced is the client decrypt-coalesced calls through.
func prepareBench(ctx context.Context, op string, keys []string, payloadSize, batch, workers int, clients []custodyv1.CryptoServiceClient,
	benchContext map[string]string, coalesced *client.Client) (*benchWorkload, error) {
	payload := make([]byte, payloadSize)
	if _, err := rand.Read(payload); err != nil {
		return nil, localError(codes.Internal, fmt.Errorf("random payload: %w", err))
	}
	nk := uint64(len(keys))
	// Each worker starts at its own offset so that the keys are used evenly.
	keyFor := func(worker int, n uint64) int {
		return int((uint64(worker)*nk/uint64(max(workers, 1)) + n) % nk)
	}
	switch op {
	case "encrypt":
		return &benchWorkload{call: func(ctx context.Context, c custodyv1.CryptoServiceClient, w int, n uint64) (int, []codes.Code, error) {
			_, err := c.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: keys[keyFor(w, n)], Plaintext: payload, Context: benchContext})
			return okIf(err), nil, err
		}}, nil
	case "decrypt", "batch-decrypt", "decrypt-coalesced":
		cts, err := prepareEach(ctx, keys, clients, func(ctx context.Context, c custodyv1.CryptoServiceClient, key string) ([]byte, error) {
			r, err := c.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: key, Plaintext: payload, Context: benchContext})
			return r.GetCiphertext(), err
		})
		if err != nil {
			return nil, err
		}
		if op == "decrypt-coalesced" {
			return &benchWorkload{call: func(ctx context.Context, _ custodyv1.CryptoServiceClient, w int, n uint64) (int, []codes.Code, error) {
				i := keyFor(w, n)
				_, err := coalesced.Decrypt(ctx, keys[i], cts[i], benchContext)
				return okIf(err), nil, err
			}}, nil
		}
		if op == "decrypt" {
			return &benchWorkload{call: func(ctx context.Context, c custodyv1.CryptoServiceClient, w int, n uint64) (int, []codes.Code, error) {
				i := keyFor(w, n)
				_, err := c.Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: keys[i], Ciphertext: cts[i], Context: benchContext})
				return okIf(err), nil, err
			}}, nil
		}
		return &benchWorkload{call: func(ctx context.Context, c custodyv1.CryptoServiceClient, w int, n uint64) (int, []codes.Code, error) {
			items := make([]*custodyv1.DecryptRequest, batch)
			for j := range items {
				i := keyFor(w, n*uint64(batch)+uint64(j))
				items[j] = &custodyv1.DecryptRequest{KeyName: keys[i], Ciphertext: cts[i], Context: benchContext}
			}
			resp, err := c.BatchDecrypt(ctx, &custodyv1.BatchDecryptRequest{Items: items})
			if err != nil {
				return 0, nil, err
			}
			ok, bad := 0, []codes.Code(nil)
			for _, r := range resp.GetResults() {
				if e := r.GetError(); e != nil {
					bad = append(bad, codes.Code(e.GetCode()))
					continue
				}
				ok++
			}
			if missing := len(items) - len(resp.GetResults()); missing > 0 {
				for range missing {
					bad = append(bad, codes.Internal)
				}
			}
			return ok, bad, nil
		}}, nil
	case "datakey", "datakey-kwp":
		kwp := op == "datakey-kwp"
		return &benchWorkload{call: func(ctx context.Context, c custodyv1.CryptoServiceClient, w int, n uint64) (int, []codes.Code, error) {
			r, err := c.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: keys[keyFor(w, n)], Context: benchContext, WithoutPlaintext: kwp})
			clear(r.GetPlaintext())
			return okIf(err), nil, err
		}}, nil
	case "unwrap", "unwrap-kwp":
		kwp := op == "unwrap-kwp"
		wrapped, err := prepareEach(ctx, keys, clients, func(ctx context.Context, c custodyv1.CryptoServiceClient, key string) ([]byte, error) {
			r, err := c.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: key, Context: benchContext, WithoutPlaintext: kwp})
			clear(r.GetPlaintext())
			return r.GetWrappedKey(), err
		})
		if err != nil {
			return nil, err
		}
		return &benchWorkload{call: func(ctx context.Context, c custodyv1.CryptoServiceClient, w int, n uint64) (int, []codes.Code, error) {
			i := keyFor(w, n)
			r, err := c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: keys[i], WrappedKey: wrapped[i], Context: benchContext})
			clear(r.GetPlaintext())
			return okIf(err), nil, err
		}}, nil
	case "sign":
		digest := sha256.Sum256(payload)
		return &benchWorkload{call: func(ctx context.Context, c custodyv1.CryptoServiceClient, w int, n uint64) (int, []codes.Code, error) {
			_, err := c.Sign(ctx, &custodyv1.SignRequest{KeyName: keys[keyFor(w, n)], Input: &custodyv1.SignRequest_Digest{Digest: digest[:]}})
			return okIf(err), nil, err
		}}, nil
	case "mac":
		return &benchWorkload{call: func(ctx context.Context, c custodyv1.CryptoServiceClient, w int, n uint64) (int, []codes.Code, error) {
			_, err := c.Mac(ctx, &custodyv1.MacRequest{KeyName: keys[keyFor(w, n)], Data: payload})
			return okIf(err), nil, err
		}}, nil
	}
	return nil, usageErrorf("--op must be one of %v, not %q", benchOps, op)
}

func okIf(err error) int {
	if err != nil {
		return 0
	}
	return 1
}

// prepareEach runs fn once per key, a few at a time over every client, and
// returns the results in key order. The first failure stops it: a bench
// whose inputs cannot be made (a key missing, a grant absent) measures
// nothing useful.
func prepareEach(ctx context.Context, keys []string, clients []custodyv1.CryptoServiceClient,
	fn func(context.Context, custodyv1.CryptoServiceClient, string) ([]byte, error)) ([][]byte, error) {
	out := make([][]byte, len(keys))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		next  = make(chan int)
	)
	workers := min(len(keys), 4*len(clients))
	for w := range workers {
		wg.Go(func() {
			c := clients[w%len(clients)]
			for i := range next {
				b, err := fn(ctx, c, keys[i])
				if err != nil {
					once.Do(func() { first = fmt.Errorf("prepare inputs with key %q: %w", keys[i], err); cancel() })
					continue
				}
				out[i] = b
			}
		})
	}
feed:
	for i := range keys {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first != nil {
		return nil, first
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
