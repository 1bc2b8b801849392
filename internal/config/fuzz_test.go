package config

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// FuzzDecode checks that no input makes Decode or Validate panic, that every
// failure wraps ErrInvalid, and that quoted scalar values never reach an
// error message.
func FuzzDecode(f *testing.F) {
	example, err := os.ReadFile("../../deploy/custodyd.example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(example))
	f.Add("hsm: {uri: 'pkcs11:', pin_env: SECRETVAL}\n")
	f.Add("hsm:\n  max_sessions: SECRETVAL\n")
	f.Add("grants:\n  - {identity: a, keys: [SECRETVAL], operations: [x]}\n")
	f.Add("a: &x {b: *x}\n")
	f.Add("<<: {listen: 'a:1'}\n")
	f.Add("---\n---\n")
	f.Fuzz(func(t *testing.T, in string) {
		cfg, err := Decode([]byte(in))
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			if strings.Contains(in, "SECRETVAL") && strings.Contains(err.Error(), "`SECRETVAL") {
				t.Fatalf("error quotes a value: %v", err)
			}
			return
		}
		cfg.ApplyDefaults()
		if err := cfg.Validate(); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("validate error does not wrap ErrInvalid: %v", err)
		}
	})
}
