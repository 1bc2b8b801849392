package hsm_test

import (
	"slices"
	"testing"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/config"
)

// TestConfigAcceptsExactlyTheProfilesThatExist: hsm.profile values that
// config validates are the profiles package hsm defines.
func TestConfigAcceptsExactlyTheProfilesThatExist(t *testing.T) {
	if got := hsm.ProfileNames(); !slices.Equal(got, config.HSMProfiles) {
		t.Fatalf("hsm profiles %v, config accepts %v", got, config.HSMProfiles)
	}
}

// TestProfilePINChecksReadThePINInPlace: the vendor profiles' PIN checks
// refuse what cannot be right and accept what can, without copying the
// PIN (no string conversion: a copy on the heap or a goroutine stack that
// nobody zeroes).
func TestProfilePINChecksReadThePINInPlace(t *testing.T) {
	for _, c := range []struct {
		profile string
		pin     string
		ok      bool
	}{
		{"cloudhsm", "crypto-user:a-long-password-of-forty-characters", true},
		{"cloudhsm", "crypto-user:pass:with:colons", true},
		{"cloudhsm", "no-colon-at-all", false},
		{"cloudhsm", ":no-user", false},
		{"cloudhsm", "no-password:", false},
		{"yubihsm", "0001password", true},
		{"yubihsm", "00aFpassword-much-longer-than-thirty-two-bytes", true},
		{"yubihsm", "0001", false},
		{"yubihsm", "x001password", false},
	} {
		p, err := hsm.LookupProfile(c.profile)
		if err != nil || p.CheckPIN == nil {
			t.Fatalf("%s: %v (CheckPIN set: %v)", c.profile, err, p != nil && p.CheckPIN != nil)
		}
		pin := []byte(c.pin)
		if err := p.CheckPIN(pin); (err == nil) != c.ok {
			t.Errorf("%s CheckPIN(%q) = %v, want ok=%v", c.profile, c.pin, err, c.ok)
		}
		if c.ok {
			if n := testing.AllocsPerRun(20, func() { _ = p.CheckPIN(pin) }); n != 0 {
				t.Errorf("%s CheckPIN allocates %v times per call: it copies the PIN", c.profile, n)
			}
		}
	}
}
