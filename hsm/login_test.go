package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// probeLogin tries cfg's PIN from a separate process (pkcs11-tool), so the
// attempt cannot disturb the login state this process shares, and returns
// ErrLogin if the token refuses it.
func probeLogin(t *testing.T, cfg hsm.Config) error {
	t.Helper()
	tool, err := exec.LookPath("pkcs11-tool")
	if err != nil {
		t.Fatal("pkcs11-tool is not installed: run `make deps` (or `apt-get install -y opensc`)")
	}
	u, err := hsm.ParseURI(cfg.URI)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool, "--module", u.ModulePath, "--token-label", u.Token, "--login", "--pin", string(cfg.PIN), "--list-objects")
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "CKR_PIN_INCORRECT") {
			return hsm.ErrLogin
		}
		t.Fatalf("pkcs11-tool: %v\n%s", err, out)
	}
	return nil
}

func TestChangePINRetiresTheOldPINAndTheNewOneLogsIn(t *testing.T) {
	m, tok := hsmtest.Open(t)
	ctx := ctxT(t)
	k, _, err := m.CreateKey(ctx, hsm.KindAES256, "k")
	if err != nil {
		t.Fatal(err)
	}
	minLen, maxLen, err := m.PINLengths(ctx)
	if err != nil || minLen < 1 || maxLen < 16 {
		t.Fatalf("PIN lengths %d..%d: %v", minLen, maxLen, err)
	}
	fresh := []byte("a-much-longer-fresh-pin-0123456789")
	ch, err := m.ChangePIN(ctx, fresh)
	if err != nil {
		t.Fatal(err)
	}
	ch.Done()
	// The module keeps working on its existing login.
	if _, _, err := m.Encrypt(ctx, k, []byte("x"), nil); err != nil {
		t.Fatalf("encrypt after ChangePIN: %v", err)
	}
	old := tok.Config()
	if err := probeLogin(t, old); !errors.Is(err, hsm.ErrLogin) {
		t.Fatalf("old PIN: %v, want refused", err)
	}
	nw := tok.Config()
	nw.PIN = bytes.Clone(fresh)
	if err := probeLogin(t, nw); err != nil {
		t.Fatalf("new PIN refused: %v", err)
	}
	if _, err := m.ChangePIN(ctx, nil); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("empty PIN: %v", err)
	}
	ctxDone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.ChangePIN(ctxDone, fresh); err == nil {
		t.Fatal("ChangePIN with a cancelled context succeeded")
	}
}

// TestPINChangeRevertRestoresTheOldPIN: a caller whose next step fails
// (persisting the new PIN's shares) puts the token back as it was.
func TestPINChangeRevertRestoresTheOldPIN(t *testing.T) {
	m, tok := hsmtest.Open(t)
	ctx := ctxT(t)
	ch, err := m.ChangePIN(ctx, []byte("never-persisted-pin-9876543210"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Revert(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ch.Revert(ctx); err != nil { // settled: harmless
		t.Fatal(err)
	}
	if err := probeLogin(t, tok.Config()); err != nil {
		t.Fatalf("installer PIN after revert: %v", err)
	}
	// The module re-logs in with the restored PIN after a token loss.
	tokenRemovedAndRestored(t, m, tok)
}

func TestDataObjectsCreateReadReplaceDestroy(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	const label = "custody:test-data:v1"
	if vals, err := m.DataObjects(ctx, label); err != nil || len(vals) != 0 {
		t.Fatalf("fresh token: %q %v", vals, err)
	}
	for _, v := range []string{"a:1", "b:1"} {
		if err := m.CreateDataObject(ctx, label, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	isA := func(v []byte) bool { return bytes.HasPrefix(v, []byte("a:")) }
	ok, err := m.ReplaceDataObject(ctx, label, isA, []byte("a:2"))
	if err != nil || !ok {
		t.Fatalf("replace: %v %v", ok, err)
	}
	vals, err := m.DataObjects(ctx, label)
	if err != nil || len(vals) != 2 {
		t.Fatalf("read: %q %v", vals, err)
	}
	got := map[string]bool{}
	for _, v := range vals {
		got[string(v)] = true
	}
	if !got["a:2"] || !got["b:1"] {
		t.Fatalf("values %q", vals)
	}
	if ok, err := m.ReplaceDataObject(ctx, label, func(v []byte) bool { return false }, []byte("z")); ok || err != nil {
		t.Fatalf("replace with no match: %v %v", ok, err)
	}
	if _, err := m.ReplaceDataObject(ctx, label, func([]byte) bool { return true }, []byte("z")); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("replace matching two: %v", err)
	}
	n, err := m.DestroyDataObjects(ctx, label, isA)
	if err != nil || n != 1 {
		t.Fatalf("destroy: %d %v", n, err)
	}
	vals, _ = m.DataObjects(ctx, label)
	if len(vals) != 1 || string(vals[0]) != "b:1" {
		t.Fatalf("after destroy: %q", vals)
	}
	// Data objects are not keys: the key index ignores them.
	if _, err := m.Index(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDataObjectsRefusedWhereTheProfileSaysSo: on a token whose profile
// keeps no data objects every data-object call fails with ErrUnsupported,
// and NSS really refuses them (so the profile is not merely cautious).
func TestDataObjectsRefusedWhereTheProfileSaysSo(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m, err := hsm.Open(ctxT(t), tok.Config())
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		err = m.CreateDataObject(ctxT(t), "custody:test-data:v1", []byte("a:1"))
		if !m.Profile().NoDataObjects {
			if err != nil {
				t.Fatalf("%s keeps data objects: %v", m.Profile().Name, err)
			}
			return
		}
		if !errors.Is(err, hsm.ErrUnsupported) {
			t.Fatalf("create on %s: %v, want ErrUnsupported", m.Profile().Name, err)
		}
		if _, err := m.DataObjects(ctxT(t), "custody:test-data:v1"); !errors.Is(err, hsm.ErrUnsupported) {
			t.Fatalf("read: %v", err)
		}
	})
}
