package server_test

import (
	"testing"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/testenv"
)

// TestConfiguredRecyclingRunsInTheDaemonWithoutFailures checks that
// hsm.recycle_after_session_objects reaches the module: key-transport data
// keys (which need session objects) keep working across several recycles.
func TestConfiguredRecyclingRunsInTheDaemonWithoutFailures(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{Mutate: func(e *testenv.Env, c *config.Config) {
		c.HSM.RecycleAfterSessionObjects = 25
		c.Grants = append(c.Grants, config.GrantConfig{Identity: "dev-relay", Keys: []string{"kt"},
			Operations: []config.Operation{config.OpDataKey, config.OpUnwrap}, AllowPlaintext: true})
	}})
	e.CreateKey(t, "kt", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	for i := range 60 {
		dk, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "kt", WithoutPlaintext: true})
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if _, err := c.Unwrap(x, &custodyv1.UnwrapRequest{KeyName: "kt", WrappedKey: dk.WrappedKey}); err != nil {
			t.Fatalf("call %d: unwrap: %v", i, err)
		}
	}
	if st := e.D.HSM.Stats(); st.Recycles < 2 || st.Recoveries != 0 {
		t.Fatalf("after %d session objects with recycling every 25: %d recycles, %d recoveries", st.SessionObjects, st.Recycles, st.Recoveries)
	}
}
