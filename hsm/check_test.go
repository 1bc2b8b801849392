package hsm_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// TestCheckGivesEachTokenItsVerdictAndLeavesNothingBehind: the check a
// site runs before production (custodyctl hsm check) finds SoftHSM fit and
// NSS softokn unfit (it lets non-extractable keys out), reports what NSS
// cannot do or show, and destroys every scratch key it made.
func TestCheckGivesEachTokenItsVerdictAndLeavesNothingBehind(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		r, err := hsm.Check(ctxT(t), tok.Config())
		if err != nil {
			t.Fatal(err)
		}
		wantFit := extractionRefused[tok.Kind]
		if r.Fit != wantFit {
			t.Fatalf("fit = %v (problems %v), want %v", r.Fit, r.Problems, wantFit)
		}
		if !wantFit && !strings.Contains(strings.Join(r.Problems, "\n"), "CKA_EXTRACTABLE=false out") {
			t.Errorf("problems do not say why: %v", r.Problems)
		}
		if !slices.Equal(r.Unverified, unverifiedOn[tok.Kind]) {
			t.Errorf("unverified %v, want %v", r.Unverified, unverifiedOn[tok.Kind])
		}
		if r.Profile != tok.Profile || r.Token != tok.Label {
			t.Errorf("report names profile %q token %q", r.Profile, r.Token)
		}
		for _, k := range r.Keys {
			_, missing := missingKinds[tok.Kind][kindByName(k.Kind)]
			switch {
			case missing && (k.Supported || !strings.Contains(k.Error, "lacks")):
				t.Errorf("%s: %+v, want unsupported", k.Kind, k)
			case !missing && (!k.Supported || !k.Destroyed || k.Error != ""):
				t.Errorf("%s: %+v", k.Kind, k)
			case !missing && wantFit && (len(k.Allowed) != 0 || len(k.Refused) != 5):
				t.Errorf("%s: refused %v, allowed %v", k.Kind, k.Refused, k.Allowed)
			case !missing && !wantFit && !slices.Equal(k.Allowed, []string{"copy it to an extractable key", "wrap it out under another key"}):
				t.Errorf("%s on NSS: allowed %v", k.Kind, k.Allowed)
			}
		}
		if _, err := json.Marshal(r); err != nil {
			t.Fatal(err)
		}
		// Nothing is left on the token.
		m := tok.Open(t)
		if n, err := m.Index(ctxT(t)); err != nil || n != 0 {
			t.Fatalf("%d objects left on the token after the check: %v", n, err)
		}
	})
}

func kindByName(name string) hsm.Kind {
	for _, k := range allKinds {
		if k.String() == name {
			return k
		}
	}
	return hsm.KindInvalid
}
