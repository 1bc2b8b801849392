package hsm

import (
	"strings"
	"testing"
)

func TestTokenNotFoundHintNamesSOFTHSM2CONFOnlyForSoftHSM(t *testing.T) {
	if h := softHSMHint("/usr/lib/softhsm/libsofthsm2.so", ""); !strings.Contains(h, "SOFTHSM2_CONF") || !strings.Contains(h, "not set") {
		t.Errorf("unset: %q", h)
	}
	if h := softHSMHint("/usr/lib/softhsm/libsofthsm2.so", "/etc/custody/softhsm2.conf"); !strings.Contains(h, "SOFTHSM2_CONF=/etc/custody/softhsm2.conf") {
		t.Errorf("set: %q", h)
	}
	if h := softHSMHint("/opt/vendor/lib/libcknfast.so", ""); h != "" {
		t.Errorf("another vendor's module got a SoftHSM hint: %q", h)
	}
}
