package daemon

import (
	"io"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/governance"
)

// TestTheTrustAConfigDeclaresIsWhatGovernanceFixes: the trust custodyd
// hands governance (what the ceremony fixes and later starts are compared
// with) is exactly config.Config.Trust, which custodyctl's set-trust
// --from-config reproduces: for a dev config and a production one.
func TestTheTrustAConfigDeclaresIsWhatGovernanceFixes(t *testing.T) {
	t.Setenv("SOFTHSM2_CONF", "")
	_, cfg, err := PrepareDev(t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, dev := range []bool{true, false} {
		c := *cfg
		c.Dev = dev
		c.Governance.TimeLock, c.Governance.Freeze.Refusals = 3*time.Hour, 7
		c.Identities = append([]config.IdentityConfig{}, c.Identities...)
		o, err := govOptions(&c, Options{}, log)
		if err != nil {
			t.Fatal(err)
		}
		want, err := c.Trust()
		if err != nil {
			t.Fatal(err)
		}
		if got := governance.ConfigTrust(o); !reflect.DeepEqual(got, want) {
			t.Errorf("dev %t:\ngovernance %+v\nconfig     %+v", dev, got, want)
		}
	}
}
