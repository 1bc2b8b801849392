// Package names holds the one rule for every name and id Custody accepts
// from a caller, a config file or a proposal, and the one way untrusted text
// is rendered for a human.
//
// Invariants:
//   - A key name is 1..MaxKeyName bytes of [A-Za-z0-9._-] and does not start
//     with '.' or '-'. The config file, the key model, grants, orders and
//     proposals all use KeyName, so they cannot disagree.
//   - An id (proposal, grant, case reference, officer name, ...) is valid
//     UTF-8 with no control or format characters (C0/C1 controls, DEL,
//     bidirectional overrides, zero-width characters) and no leading or
//     trailing white space, so what an officer reads on a terminal is what
//     executes.
//   - Escape renders any remaining untrusted text (descriptions, context
//     values, identities) with every non-graphic rune escaped.
package names

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrInvalid is wrapped by every error of this package.
var ErrInvalid = errors.New("invalid name")

// MaxKeyName is the longest key name, in bytes.
const MaxKeyName = 128

// KeyName checks a key name. Errors wrap ErrInvalid and never echo the name.
func KeyName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalid)
	case len(name) > MaxKeyName:
		return fmt.Errorf("%w: %d bytes, at most %d allowed", ErrInvalid, len(name), MaxKeyName)
	case name[0] == '.' || name[0] == '-':
		return fmt.Errorf("%w: must not start with %q", ErrInvalid, name[0])
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			if strings.ContainsRune("*?[", rune(c)) {
				return fmt.Errorf("%w: wildcards are not allowed; name exactly one key", ErrInvalid)
			}
			return fmt.Errorf("%w: byte %d is not one of [A-Za-z0-9._-]", ErrInvalid, i)
		}
	}
	return nil
}

// ID checks an identifier or short label of at most max bytes: non-empty,
// valid UTF-8, no control or format characters, no surrounding white space.
func ID(s string, max int) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty", ErrInvalid)
	case len(s) > max:
		return fmt.Errorf("%w: %d bytes, at most %d allowed", ErrInvalid, len(s), max)
	case strings.TrimSpace(s) != s:
		return fmt.Errorf("%w: leading or trailing white space", ErrInvalid)
	}
	return Text(s, max)
}

// Text checks free text of at most max bytes (it may be empty and contain
// spaces): valid UTF-8 with no control or format characters.
func Text(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %d bytes, at most %d allowed", ErrInvalid, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: not valid utf-8", ErrInvalid)
	}
	for i, r := range s {
		if hidden(r) {
			return fmt.Errorf("%w: control or format character U+%04X at byte %d", ErrInvalid, r, i)
		}
	}
	return nil
}

// hidden reports runes that change how a terminal shows the text around
// them, or show nothing: controls (Cc), format characters (Cf: bidi
// overrides, zero-width joiners), and line/paragraph separators.
func hidden(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029'
}

// Escape renders untrusted text for a human: printable text unchanged, every
// hidden rune and invalid byte as a Go escape (\x1b, \u202e). Text that
// passed ID or Text is returned as is.
func Escape(s string) string {
	clean := utf8.ValidString(s)
	if clean {
		for _, r := range s {
			if hidden(r) || r == '\\' {
				clean = false
				break
			}
		}
	}
	if clean {
		return s
	}
	q := strconv.QuoteToGraphic(s)
	q = q[1 : len(q)-1]
	return strings.ReplaceAll(q, `\"`, `"`)
}
