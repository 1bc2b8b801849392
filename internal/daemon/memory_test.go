package daemon

import (
	"io"
	"log/slog"
	"testing"

	"github.com/custodyhq/custody/internal/config"
)

func TestRecycleAfterDefaultsForSoftHSMOnly(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	softhsm := "pkcs11:token=t?module-path=/usr/lib/softhsm/libsofthsm2.so"
	other := "pkcs11:token=t?module-path=/opt/vendor/lib/libvendorpkcs11.so"
	for _, tc := range []struct {
		uri        string
		configured int
		want       int
	}{
		{softhsm, 0, SoftHSMRecycleAfterSessionObjects},
		{softhsm, 1234, 1234},
		{softhsm, -1, 0},
		{other, 0, 0},
		{other, 500, 500},
		{other, -1, 0},
		{"not a uri", 0, 0},
	} {
		got := recycleAfter(config.HSMConfig{URI: tc.uri, RecycleAfterSessionObjects: tc.configured}, log)
		if got != tc.want {
			t.Errorf("recycleAfter(%s, %d) = %d, want %d", tc.uri, tc.configured, got, tc.want)
		}
	}
}
