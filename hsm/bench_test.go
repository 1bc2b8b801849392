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
