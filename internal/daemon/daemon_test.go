package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStartErrorsNameEachPartOnce: a failed start says which part failed
// and why, without "hsm: hsm:"-style repetition, and a missing SoftHSM
// token names SOFTHSM2_CONF.
func TestStartErrorsNameEachPartOnce(t *testing.T) {
	t.Setenv("SOFTHSM2_CONF", "") // restored after the test; PrepareDev sets it
	quiet := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"missing token", []string{"hsm: not found: token nope not found", "SOFTHSM2_CONF="}},
		{"unopenable store", []string{"store: open "}},
		{"unwritable audit directory", []string{"audit: "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, cfg, err := PrepareDev(dir, "127.0.0.1:0", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			cfg.GatewayListen = ""
			switch tc.name {
			case "missing token":
				cfg.HSM.URI = strings.Replace(cfg.HSM.URI, "token=custody-dev", "token=nope", 1)
			case "unopenable store":
				cfg.Store.Path = filepath.Join(dir, "no-such-dir", "custody.db")
			case "unwritable audit directory":
				blocker := filepath.Join(dir, "blocker")
				if err := os.WriteFile(blocker, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				cfg.Audit.Dir = filepath.Join(blocker, "audit")
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			d, err := Start(ctx, cfg, quiet)
			if err == nil {
				d.Shutdown(ctx)
				t.Fatal("started")
			}
			msg := err.Error()
			for _, p := range []string{"hsm: hsm:", "store: store:", "audit: audit:"} {
				if strings.Contains(msg, p) {
					t.Errorf("error repeats its prefix: %q", msg)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
		})
	}
}
