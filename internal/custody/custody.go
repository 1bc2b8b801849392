// Package custody holds the one definition of a key "in custody": the
// PKCS#11 attributes, read back from the token, of a key that was generated
// inside it and can never leave it. Package hsm applies it to every key it
// makes, the key registry to every version it records, the ceremony
// transcript (and custodyctl, offline) to every key it lists.
//
// Invariant: token, sensitive, always-sensitive, not extractable and never
// extractable are required, and a token that let a non-extractable key out
// ("extractable_enforced" unverified) is never in custody, whatever any
// vendor profile says. Private, local and not-modifiable are required too,
// unless the record lists them as unverified (a vendor profile that cannot
// set or report them): then they are shown as unverified, never passed
// silently.
package custody

import (
	"errors"
	"fmt"
	"slices"
)

// ErrNotInCustody is wrapped by Check's errors.
var ErrNotInCustody = errors.New("key is not in custody")

// Names of the custody properties, as records list them in Unverified.
const (
	Token               = "token"
	Private             = "private"
	Sensitive           = "sensitive"
	Extractable         = "extractable"
	Modifiable          = "modifiable"
	NeverExtractable    = "never_extractable"
	AlwaysSensitive     = "always_sensitive"
	Local               = "local"
	ExtractableEnforced = "extractable_enforced"
)

// Waivable are the properties a vendor profile may record as unverified.
var Waivable = []string{Private, Local, Modifiable}

// Attrs are a key's custody attributes as read back from its token.
type Attrs struct {
	Token            bool `json:"token"`
	Private          bool `json:"private"`
	Sensitive        bool `json:"sensitive"`
	AlwaysSensitive  bool `json:"always_sensitive"`
	Extractable      bool `json:"extractable"`
	NeverExtractable bool `json:"never_extractable"`
	Local            bool `json:"local"`
	Modifiable       bool `json:"modifiable"`
	// Unverified are properties the token could not be shown to have.
	Unverified []string `json:"unverified,omitempty"`
}

func (a Attrs) waived(name string) bool {
	return slices.Contains(Waivable, name) && slices.Contains(a.Unverified, name)
}

// Check returns nil when the attributes are those of a key in custody, or
// an error naming the first property that fails.
func (a Attrs) Check() error {
	if err := a.Recordable(); err != nil {
		return err
	}
	if slices.Contains(a.Unverified, ExtractableEnforced) {
		return fmt.Errorf("%w: %s", ErrNotInCustody, describe(ExtractableEnforced))
	}
	return nil
}

// Recordable returns nil when a key with these attributes may be recorded
// at all: everything Check requires, except that the token may be one that
// lets non-extractable keys out, provided the record says so
// ("extractable_enforced" unverified). Such a key is never Safe; custodyd
// holds keys on such a token only in dev mode.
func (a Attrs) Recordable() error {
	for _, r := range []struct {
		name string
		ok   bool
	}{
		{Token, a.Token}, {Sensitive, a.Sensitive}, {AlwaysSensitive, a.AlwaysSensitive},
		{Extractable, !a.Extractable}, {NeverExtractable, a.NeverExtractable},
		{Private, a.Private || a.waived(Private)}, {Local, a.Local || a.waived(Local)},
		{Modifiable, !a.Modifiable || a.waived(Modifiable)},
	} {
		if !r.ok {
			return fmt.Errorf("%w: %s", ErrNotInCustody, describe(r.name))
		}
	}
	return nil
}

// Safe reports whether Check passes.
func (a Attrs) Safe() bool { return a.Check() == nil }

// Verified reports whether Check passes with nothing left unverified.
func (a Attrs) Verified() bool { return a.Safe() && len(a.Unverified) == 0 }

func describe(name string) string {
	switch name {
	case Token:
		return "not a token object"
	case Sensitive:
		return "not sensitive"
	case AlwaysSensitive:
		return "was not always sensitive"
	case Extractable:
		return "extractable"
	case NeverExtractable:
		return "was extractable at some time"
	case ExtractableEnforced:
		return "the token lets non-extractable keys out"
	case Private:
		return "not private"
	case Local:
		return "not generated on the token"
	case Modifiable:
		return "modifiable"
	}
	return name
}
