package policy

import (
	"errors"
	"strings"
	"testing"
)

// TestAGrantPinnedToAnSPKIAllowsOnlyThatKey: a grant that pins the relay's
// public key allows a caller with that identity and that key, and refuses
// the same identity with another key (a certificate minted by whoever holds
// the client CA) with ErrKeyMismatch, and Authorize (no key known) too.
func TestAGrantPinnedToAnSPKIAllowsOnlyThatKey(t *testing.T) {
	pin := strings.Repeat("ab", 32)
	other := strings.Repeat("cd", 32)
	spec := testSpec()
	spec.Grants = append(spec.Grants, Grant{ID: "g-b-pinned", Identity: relayB, Key: "pinned", Operations: []Op{OpDecrypt}, SPKI: pin})
	p := mustPolicy(t, spec)
	if d, err := p.AuthorizeCaller(relayB, pin, RoleRelay, OpDecrypt, "pinned", nil); err != nil || d.GrantID != "g-b-pinned" {
		t.Fatalf("the pinned key is refused: %v %+v", err, d)
	}
	for _, spki := range []string{other, ""} {
		_, err := p.AuthorizeCaller(relayB, spki, RoleRelay, OpDecrypt, "pinned", nil)
		if !errors.Is(err, ErrKeyMismatch) || !errors.Is(err, ErrNotGranted) {
			t.Fatalf("caller key %q: %v, want ErrKeyMismatch and ErrNotGranted", spki, err)
		}
	}
	if _, err := p.Authorize(relayB, RoleRelay, OpDecrypt, "pinned", nil); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("Authorize without a key: %v", err)
	}
	// Unpinned grants do not care about the key.
	if _, err := p.AuthorizeCaller(relayB, other, RoleRelay, OpEncrypt, keyMsgs, nil); err != nil {
		t.Fatalf("unpinned grant: %v", err)
	}
}

func TestAGrantSPKIPinMustBeLowerCaseHexSHA256(t *testing.T) {
	for _, bad := range []string{"abc", strings.Repeat("AB", 32), strings.Repeat("zz", 32), "spki:" + strings.Repeat("ab", 32)} {
		g := Grant{ID: "g", Identity: relayA, Key: keyMsgs, Operations: []Op{OpEncrypt}, SPKI: bad}
		if err := g.Validate(); !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "spki") {
			t.Errorf("spki %q: %v", bad, err)
		}
	}
}
