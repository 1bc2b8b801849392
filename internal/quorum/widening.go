package quorum

import (
	"time"

	"github.com/custodyhq/custody/internal/policy"
)

// DefaultTimeLock is how long a widening proposal waits, after reaching its
// threshold, for a veto before it can execute.
const DefaultTimeLock = 24 * time.Hour

// Current is the state a proposal is compared with to decide whether it
// widens access. Unknown state counts as widening, so a caller that forgets
// to fill it in gets the time-lock, not a bypass.
type Current struct {
	// Budget returns the budget in force for identity on key (identity ""
	// for the key's shared budget), and false if there is none.
	Budget func(identity, key string) (policy.Budget, bool)
	// Threshold is the current M.
	Threshold int
	// Trust is the trust in force (nil: unknown, so a set-trust widens).
	Trust *Trust
}

// Widening reports whether a proposal with payload p widens access and so
// waits out the time-lock: a new grant, a raised budget (compared with
// cur), a new officer, a removed officer or a lower threshold (both reduce
// who can veto or how many must agree), a disclosure order, an unfreeze,
// re-enabling a key version (it restores decryption of old ciphertexts),
// and a set-trust that widens (Trust.Wider). Key creation, rotation,
// disabling, grant removal and destruction narrow or keep access and need
// only the quorum.
//
// The ledger asks this when a proposal reaches its threshold, with cur the
// state in force then (Decide), not when it is proposed.
func Widening(p Payload, cur Current) bool {
	switch v := deref(p).(type) {
	case AddGrant, AddOfficer, RemoveOfficer, DisclosureOrder, Unfreeze, EnableVersion:
		return true
	case SetBudget:
		if cur.Budget == nil {
			return true
		}
		old, ok := cur.Budget(v.Identity, v.Key)
		return !ok || v.Budget.Wider(old)
	case SetThreshold:
		return cur.Threshold == 0 || v.Threshold < cur.Threshold
	case CreateKey, DestroyKey, RotateKey, DisableVersion, RemoveGrant:
		return false
	case SetTrust:
		return cur.Trust == nil || v.Trust.Wider(*cur.Trust)
	case RekeySeal:
		// A new PIN split among the same officers gives nobody more access.
		return false
	}
	return true
}
