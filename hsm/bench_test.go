package hsm_test

import (
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// Raw operation rates on a real SoftHSM token: `make bench` runs these.
// They are benchmarks, not tests: `make test` does not run them.

func benchKey(b *testing.B, kind hsm.Kind) (*hsm.Module, hsm.Key) {
	m, _ := hsmtest.Open(b)
	k, _, err := m.CreateKey(b.Context(), kind, "bench")
	if err != nil {
		b.Fatal(err)
	}
	return m, k
}

func BenchmarkEncryptAESGCM32(b *testing.B) {
	m, k := benchKey(b, hsm.KindAES256)
	pt := make([]byte, 32)
	ctx := b.Context()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := m.Encrypt(ctx, k, pt, []byte("ctx")); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkDecryptAESGCM32(b *testing.B) {
	m, k := benchKey(b, hsm.KindAES256)
	ctx := b.Context()
	iv, ct, err := m.Encrypt(ctx, k, make([]byte, 32), []byte("ctx"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Decrypt(ctx, k, iv, ct, []byte("ctx")); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkGenerateDataKey(b *testing.B) {
	m, k := benchKey(b, hsm.KindAES256)
	ctx := b.Context()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := m.GenerateDataKey(ctx, k, true); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkUnwrapDataKey(b *testing.B) {
	m, k := benchKey(b, hsm.KindAES256)
	ctx := b.Context()
	w, _, err := m.GenerateDataKey(ctx, k, false)
	if err != nil {
		b.Fatal(err)
	}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.UnwrapDataKey(ctx, k, w); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkUnwrapDataKeyForRecipient(b *testing.B) {
	m, k := benchKey(b, hsm.KindAES256)
	ctx := b.Context()
	w, _, err := m.GenerateDataKey(ctx, k, false)
	if err != nil {
		b.Fatal(err)
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 3072)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := m.UnwrapDataKeyFor(ctx, k, w, &rk.PublicKey); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchSign(b *testing.B, kind hsm.Kind, input []byte) {
	m, k := benchKey(b, kind)
	ctx := b.Context()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Sign(ctx, k, input); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkSignECDSAP256(b *testing.B)  { benchSign(b, hsm.KindECDSAP256, make([]byte, 32)) }
func BenchmarkSignECDSAP384(b *testing.B)  { benchSign(b, hsm.KindECDSAP384, make([]byte, 48)) }
func BenchmarkSignEd25519(b *testing.B)    { benchSign(b, hsm.KindEd25519, make([]byte, 64)) }
func BenchmarkSignRSA3072PSS(b *testing.B) { benchSign(b, hsm.KindRSA3072PSS, make([]byte, 32)) }

func BenchmarkHMACSHA256(b *testing.B) {
	m, k := benchKey(b, hsm.KindHMACSHA256)
	ctx := b.Context()
	data := make([]byte, 32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.MAC(ctx, k, data); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDataKeyPaths measures the sealed data-key path (GenerateSealedDataKey,
// OpenSealedDataKey: no key object) beside the AES-KWP path (GenerateDataKey,
// UnwrapDataKey: one session object per call) on one token in one run, so
// the ops/s are side by side. Recycling is off, as on a module that does not
// leak: this is the cost of the calls themselves.
func BenchmarkDataKeyPaths(b *testing.B) {
	m, k := benchKey(b, hsm.KindAES256)
	ctx := b.Context()
	aad := []byte("custody/v1 sealed-data-key bench")
	_, iv, sealed, err := m.GenerateSealedDataKey(ctx, k, aad)
	if err != nil {
		b.Fatal(err)
	}
	wrapped, _, err := m.GenerateDataKey(ctx, k, false)
	if err != nil {
		b.Fatal(err)
	}
	for _, bm := range []struct {
		name string
		op   func() error
	}{
		{"generate/sealed", func() error { _, _, _, err := m.GenerateSealedDataKey(ctx, k, aad); return err }},
		{"generate/kwp", func() error { _, _, err := m.GenerateDataKey(ctx, k, true); return err }},
		{"open/sealed", func() error { _, err := m.OpenSealedDataKey(ctx, k, iv, sealed, aad); return err }},
		{"open/kwp", func() error { _, err := m.UnwrapDataKey(ctx, k, wrapped); return err }},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := bm.op(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
