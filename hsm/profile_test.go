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
