package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// runCheck runs custodyctl hsm check in-process with a deadline that allows
// for RSA-3072 key generation on a busy machine.
func runCheck(t *testing.T, args ...string) invocation {
	t.Helper()
	for _, e := range []string{envAddr, envCA, envCert, envKey, envOutput} {
		if _, set := os.LookupEnv(e); set {
			t.Setenv(e, "")
		}
	}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	code := run(ctx, append([]string{"--timeout", "0", "hsm", "check"}, args...), nil, &out, &errb)
	return invocation{code, out.String(), errb.String()}
}

func tokenArgs(t *testing.T, tok *hsmtest.Token) []string {
	args := []string{"--uri", tok.URI, "--profile", tok.Profile}
	if tok.InitArgs != "" {
		args = append(args, "--init-args", tok.InitArgs)
	}
	return args
}

// TestHSMCheckVerdicts: against SoftHSM the check passes; against NSS
// softokn, which lets non-extractable keys out, it prints why and exits 1.
// Neither output contains the PIN.
func TestHSMCheckVerdicts(t *testing.T) {
	for _, c := range []struct {
		kind hsmtest.Kind
		code int
		says []string
	}{
		{hsmtest.SoftHSM, exitOK, []string{"verdict:  FIT to hold keys in custody", "CKM_AES_KEY_WRAP_PAD (0x210A)", "sha1"}},
		{hsmtest.NSS, exitError, []string{"verdict:  NOT FIT", "CKM_AES_KEY_WRAP_KWP (0x210B)", "sha256",
			"extractable_enforced", "copy it to an extractable key"}},
	} {
		t.Run(string(c.kind), func(t *testing.T) {
			tok := hsmtest.NewKind(t, c.kind)
			t.Setenv("CHECK_PIN", tok.PIN)
			inv := runCheck(t, append(tokenArgs(t, tok), "--pin-env", "CHECK_PIN")...)
			if inv.code != c.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", inv.code, c.code, inv.stdout, inv.stderr)
			}
			for _, s := range c.says {
				if !strings.Contains(inv.stdout, s) {
					t.Errorf("output does not say %q:\n%s", s, inv.stdout)
				}
			}
			if c.code != exitOK && (strings.Count(inv.stderr, "\n") != 1 || !strings.Contains(inv.stderr, "not fit to hold keys")) {
				t.Errorf("stderr %q", inv.stderr)
			}
			if strings.Contains(inv.stdout+inv.stderr, tok.PIN) {
				t.Fatal("the PIN appears in the output")
			}
		})
	}
}

// TestHSMCheckJSONAndPINFile: --output json gives one JSON document; the
// PIN may come from a private file, and a file others can read is refused
// before the token is touched.
func TestHSMCheckJSONAndPINFile(t *testing.T) {
	tok := hsmtest.New(t)
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inv := runCheck(t, append(tokenArgs(t, tok), "--pin-file", pinFile, "--output", "json")...)
	var r struct {
		Fit          bool `json:"fit"`
		Capabilities struct {
			Wrap struct {
				OK       bool `json:"ok"`
				Verified bool `json:"verified"`
			} `json:"aes_key_wrap_pad"`
		} `json:"capabilities"`
		Keys []struct {
			Kind      string `json:"kind"`
			Destroyed bool   `json:"destroyed"`
		} `json:"keys"`
	}
	if inv.code != exitOK || json.Unmarshal([]byte(inv.stdout), &r) != nil || !r.Fit || !r.Capabilities.Wrap.Verified || len(r.Keys) != 6 {
		t.Fatalf("json check: %+v\n%s\n%s", r, inv.stdout, inv.stderr)
	}
	for _, k := range r.Keys {
		if !k.Destroyed {
			t.Errorf("scratch %s key not destroyed", k.Kind)
		}
	}
	if err := os.Chmod(pinFile, 0o644); err != nil {
		t.Fatal(err)
	}
	inv = runCheck(t, append(tokenArgs(t, tok), "--pin-file", pinFile)...)
	if inv.code == exitOK || !strings.Contains(inv.stderr, "chmod 600") {
		t.Fatalf("world-readable pin file: %+v", inv)
	}
	inv = runCheck(t, tokenArgs(t, tok)...)
	if inv.code == exitOK || !strings.Contains(inv.stderr, "exactly one of --pin-file") {
		t.Fatalf("no pin: %+v", inv)
	}
}

// TestKeyGetSaysWhatTheHSMCouldNotVerify: key get's attribute column never
// shows "ok" alone for a version with unverified properties.
func TestKeyGetSaysWhatTheHSMCouldNotVerify(t *testing.T) {
	for _, c := range []struct {
		at   *custodyv1.HsmAttributes
		want string
	}{
		{&custodyv1.HsmAttributes{Token: true, Private: true, NeverExtractable: true, AlwaysSensitive: true, Local: true, Sensitive: true},
			"ok (token, private, sensitive, never extractable, local, not modifiable)"},
		{&custodyv1.HsmAttributes{Token: true, Private: true, NeverExtractable: true, AlwaysSensitive: true, Sensitive: true, Unverified: []string{"local"}},
			"ok, UNVERIFIED local (the HSM's vendor profile cannot set them)"},
		{&custodyv1.HsmAttributes{Token: true, Private: true, NeverExtractable: true, AlwaysSensitive: true, Local: true, Sensitive: true, Unverified: []string{"local", "extractable_enforced"}},
			"WARNING extraction-not-enforced-by-hsm UNVERIFIED local,extractable_enforced"},
		{&custodyv1.HsmAttributes{Token: true, Private: true, NeverExtractable: true, AlwaysSensitive: true, Sensitive: true}, "WARNING not-local"},
	} {
		if got := formatAttrs(c.at); got != c.want {
			t.Errorf("formatAttrs(%v) = %q, want %q", c.at, got, c.want)
		}
	}
}
