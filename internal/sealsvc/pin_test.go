package sealsvc

import (
	"strings"
	"testing"
)

// TestRandomPINIsMadeInLockedMemoryOnly: a generated PIN has the length
// asked for and only alphabet symbols, every symbol turns up, and making
// it allocates nothing per symbol on the Go heap (crypto/rand.Int left a
// big.Int and a random byte per symbol there, one after the other).
func TestRandomPINIsMadeInLockedMemoryOnly(t *testing.T) {
	seen := map[byte]int{}
	for range 200 {
		b, err := randomPIN(newPINLen)
		if err != nil {
			t.Fatal(err)
		}
		pin := b.Bytes()
		if len(pin) != newPINLen {
			t.Fatalf("PIN of %d symbols, want %d", len(pin), newPINLen)
		}
		for _, c := range pin {
			if !strings.ContainsRune(pinAlphabet, rune(c)) {
				t.Fatalf("symbol %q is not in the alphabet", c)
			}
			seen[c]++
		}
		b.Destroy()
	}
	if len(seen) != len(pinAlphabet) {
		t.Fatalf("%d of %d symbols drawn in 8000", len(seen), len(pinAlphabet))
	}
	for c, n := range seen {
		// 8000 draws of 62 symbols: about 129 each; 40 or 260 are far outside.
		if n < 40 || n > 260 {
			t.Errorf("symbol %q drawn %d times in 8000", c, n)
		}
	}
	allocs := func(n int) float64 {
		return testing.AllocsPerRun(20, func() {
			b, err := randomPIN(n)
			if err != nil {
				t.Fatal(err)
			}
			b.Destroy()
		})
	}
	if short, long := allocs(minStrongPINLen), allocs(255); long != short || long > 4 {
		t.Fatalf("randomPIN allocates %v times for 16 symbols and %v for 255: something per symbol is on the Go heap", short, long)
	}
}
