package names

import (
	"errors"
	"strings"
	"testing"
)

func TestKeyNameIsOneRule(t *testing.T) {
	for _, ok := range []string{"a", "_private", "A.b-c_9", strings.Repeat("k", MaxKeyName)} {
		if err := KeyName(ok); err != nil {
			t.Errorf("KeyName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".x", "-x", "a/b", "a b", "k*", "é", strings.Repeat("k", MaxKeyName+1), "a\x1b[2J"} {
		if err := KeyName(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("KeyName(%q) = %v, want ErrInvalid", bad, err)
		} else if strings.Contains(err.Error(), bad) && bad != "" {
			t.Errorf("KeyName error echoes the name: %v", err)
		}
	}
}

func TestIDRefusesWhatATerminalWouldHide(t *testing.T) {
	for _, ok := range []string{"p-1", "grant for relay-a", "案件-42", "bob@example"} {
		if err := ID(ok, 255); err != nil {
			t.Errorf("ID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", " lead", "trail ", "a\x1b[8m, PLAINTEXT", "a\nb", "a\rb", "a\u202eb", "a\u200bb",
		"a\u2028b", "a\x7fb", "a\u0085b", "\xff\xfe", strings.Repeat("x", 256),
	} {
		if err := ID(bad, 255); !errors.Is(err, ErrInvalid) {
			t.Errorf("ID(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestEscapeShowsHiddenRunes(t *testing.T) {
	for in, want := range map[string]string{
		"plain text":       "plain text",
		"a\x1b[8mhidden":   `a\x1b[8mhidden`,
		"rtl\u202eexe.txt": `rtl\u202eexe.txt`,
		"bad\xffbyte":      `bad\xffbyte`,
		`quote " stays`:    `quote " stays`,
		"back\\slash\x00":  `back\\slash\x00`,
		"日本語":              "日本語",
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}
