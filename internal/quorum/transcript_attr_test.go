package quorum

import (
	"strings"
	"testing"
)

// TestTranscriptAttrUnverifiedIsNeverSilent: an attribute a vendor profile
// cannot set may be listed as unverified instead of failing, and is then
// shown; custody's core attributes and an HSM that let a key out never pass.
func TestTranscriptAttrUnverifiedIsNeverSilent(t *testing.T) {
	good := TranscriptAttr{Token: true, Private: true, Sensitive: true, AlwaysSensitive: true, NeverExtractable: true, Local: true}
	with := func(f func(*TranscriptAttr)) TranscriptAttr { a := good; f(&a); return a }
	for _, c := range []struct {
		name string
		a    TranscriptAttr
		safe bool
	}{
		{"all as required", good, true},
		{"not local, not listed", with(func(a *TranscriptAttr) { a.Local = false }), false},
		{"not local, listed unverified", with(func(a *TranscriptAttr) { a.Local, a.Unverified = false, []string{"local"} }), true},
		{"modifiable, listed unverified", with(func(a *TranscriptAttr) { a.Modifiable, a.Unverified = true, []string{"modifiable"} }), true},
		{"extractable, listed unverified", with(func(a *TranscriptAttr) { a.Extractable, a.Unverified = true, []string{"extractable"} }), false},
		{"not sensitive, listed unverified", with(func(a *TranscriptAttr) { a.Sensitive, a.Unverified = false, []string{"sensitive"} }), false},
		{"hsm lets non-extractable keys out", with(func(a *TranscriptAttr) { a.Unverified = []string{"extractable_enforced"} }), false},
	} {
		if got := c.a.Safe(); got != c.safe {
			t.Errorf("%s: Safe() = %v, want %v", c.name, got, c.safe)
		}
	}
	tr := &Transcript{Format: TranscriptFormat, Keys: []TranscriptKey{{Name: "k", Version: 1,
		Attributes: with(func(a *TranscriptAttr) { a.Local, a.Unverified = false, []string{"local"} })}}}
	if text := tr.Text(); !strings.Contains(text, "UNVERIFIED") || !strings.Contains(text, "k v1: local") {
		t.Errorf("transcript text does not show the unverified attribute:\n%s", text)
	}
}
