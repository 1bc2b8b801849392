package hsm_test

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// residentBytes returns this process's resident set (VmRSS) after handing
// the Go heap's free pages back to the OS, so that what remains is live Go
// memory plus whatever C code (the PKCS#11 module) holds.
func residentBytes(t *testing.T) int64 {
	t.Helper()
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("read /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// Resident-memory regression tests for the data-key paths (issue 16).
//
// SoftHSM 2.6.1 never frees a destroyed session object: ~240-260 bytes stay
// allocated per object until C_Finalize. Calibration on this machine kind
// (both with and without -race): 30,000 AES-KWP GenerateDataKey+UnwrapDataKey
// pairs (60,000 session objects) grew the process by 13.7 MB without
// recycling and by -3..+0.1 MB with recycling every 5,000 objects; 50,000
// sealed GenerateSealedDataKey+OpenSealedDataKey pairs grew it by 0.1-1.3 MB.
//
// The bounds are generous (noise from the Go heap, glibc arenas and the race
// detector's shadow memory is a few MB) yet each is less than half of what
// the leak would add, so a regression cannot pass. residentBytes calls
// debug.FreeOSMemory first, so free Go heap pages do not count. The tests do
// not depend on time; under -race on a busy two-core machine they take
// 10-40 s together.

// sealedPairs and sealedBound: a sealed pair that leaked one object per call
// would add 100,000 x ~240 B = ~24 MB.
const (
	sealedPairs = 50_000
	sealedBound = 8 << 20
)

func TestSealedDataKeysKeepResidentMemoryFlat(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	k, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
	if err != nil {
		t.Fatal(err)
	}
	aad := []byte("custody/v1 sealed-data-key test aad")
	pairs := func(n int) {
		t.Helper()
		for i := range n {
			dk, iv, sealed, err := m.GenerateSealedDataKey(ctx, k, aad)
			if err != nil {
				t.Fatalf("pair %d: generate: %v", i, err)
			}
			got, err := m.OpenSealedDataKey(ctx, k, iv, sealed, aad)
			if err != nil || len(got) != hsm.DataKeySize || string(got) != string(dk) {
				t.Fatalf("pair %d: open: %v", i, err)
			}
		}
	}
	pairs(5_000) // warm-up: sessions, handle cache, Go heap and arenas at steady state
	before := residentBytes(t)
	pairs(sealedPairs)
	grown := residentBytes(t) - before
	t.Logf("%d sealed GenerateDataKey+Unwrap pairs: resident memory grew by %.2f MB (bound %d MB)", sealedPairs, float64(grown)/(1<<20), sealedBound>>20)
	if grown > sealedBound {
		t.Errorf("%d sealed data-key pairs grew resident memory by %.1f MB, more than %d MB: something on this path leaks (~%d bytes a call)",
			sealedPairs, float64(grown)/(1<<20), sealedBound>>20, grown/(2*sealedPairs))
	}
	if n := m.Stats().SessionObjects; n != 0 {
		t.Errorf("sealed data keys created %d session objects, want 0", n)
	}
}

// kwpPairs, kwpRecycle and kwpBound: without recycling the pairs leave
// 60,000 objects, ~14 MB; recycling every 5,000 keeps at most that many.
const (
	kwpPairs   = 30_000
	kwpRecycle = 5_000
	kwpBound   = 7 << 20
)

func TestRecyclingBoundsResidentMemoryOfKWPDataKeys(t *testing.T) {
	tok := hsmtest.New(t)
	cfg := tok.Config()
	cfg.RecycleAfterSessionObjects = kwpRecycle
	m, err := hsm.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	ctx := ctxT(t)
	k, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
	if err != nil {
		t.Fatal(err)
	}
	pairs := func(n int) {
		t.Helper()
		for i := range n {
			w, dk, err := m.GenerateDataKey(ctx, k, true)
			if err != nil {
				t.Fatalf("pair %d: generate: %v", i, err)
			}
			got, err := m.UnwrapDataKey(ctx, k, w)
			if err != nil || string(got) != string(dk) {
				t.Fatalf("pair %d: unwrap: %v", i, err)
			}
		}
	}
	pairs(3_000)
	before, recycles := residentBytes(t), m.Stats().Recycles
	pairs(kwpPairs)
	grown := residentBytes(t) - before
	st := m.Stats()
	t.Logf("%d KWP pairs, recycling every %d session objects: %d recycles, resident memory grew by %.2f MB (bound %d MB)",
		kwpPairs, kwpRecycle, st.Recycles-recycles, float64(grown)/(1<<20), kwpBound>>20)
	if grown > kwpBound {
		t.Errorf("%d KWP data-key pairs grew resident memory by %.1f MB, more than %d MB: recycling does not free session objects",
			kwpPairs, float64(grown)/(1<<20), kwpBound>>20)
	}
	if want := uint64(2*kwpPairs/kwpRecycle - 1); st.Recycles-recycles < want {
		t.Errorf("%d recycles over %d session objects, want at least %d", st.Recycles-recycles, 2*kwpPairs, want)
	}
}
