package server_test

// Red team, second round: one coerced officer (with one more officer who
// goes along) against the time-lock. The officers promised each other a
// longer veto window (a set-trust that raises the time-lock, which only
// narrows and so executes at once); a proposal filed before that, while it
// did not widen, must still wait out the lock in force when it is decided.

import (
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
)

// TestRedteamRelay2TimeLockInForceAtDecisionAppliesToProposalsFiledBefore:
// alice (coerced) files P, a set-budget that restores relay-a's budget on
// k1 to what is in force now — not widening when filed, so its record is
// given the time-lock of the day (1h) and is never raised with the others.
// Then the officers cut the budget (a narrowing set-budget: executes at
// once) and raise the time-lock to 48h (a narrowing set-trust: executes at
// once) — an incident response. alice and bob now approve P: it widens
// against the state in force (it undoes the cut), so it is time-locked —
// but for the 1h of its filing, not the 48h carol was promised to veto in.
//
// Was a hole (fixed): quorum.Ledger.Propose (internal/quorum/ledger.go) stores
// Record.TimeLock = opts.TimeLock when the proposal is filed;
// quorum.RestoreLedger raises a record's lock to the one in force only when
// rec.Widening was true at filing, and Ledger.decide, which settles
// Widening against the state in force at the threshold, keeps r.TimeLock.
// The fix: decide sets r.TimeLock = max(r.TimeLock, l.opts.TimeLock) when
// r.Widening becomes true, and RestoreLedger raises every undecided record,
// not only those widening at filing.
func TestRedteamRelay2TimeLockInForceAtDecisionAppliesToProposalsFiledBefore(t *testing.T) {
	govs, privs := o2Cluster(t, 1, time.Hour)
	g := govs[0]
	inForce := policy.Budget{Rate: 1, Burst: 1, Volume: 10, Window: time.Hour} // o2Cluster's ceremony budget

	// 1. Filed while it changes nothing: not widening.
	p := o2File(t, g, o2Officer, quorum.SetBudget{Identity: "relay-a", Key: "k1", Budget: inForce})
	if v, err := g.Proposal(p.ID); err != nil || v.Status.Widening {
		t.Fatalf("P at filing: %+v %v, want not widening", v.Status, err)
	}

	// 2. Incident response: cut the budget, raise the time-lock to 48h.
	cut := o2File(t, g, o2Operator, quorum.SetBudget{Identity: "relay-a", Key: "k1",
		Budget: policy.Budget{Rate: 1, Burst: 1, Volume: 1, Window: time.Hour}})
	o2Approve(t, g, cut, "bob", privs["bob"])
	if v := o2Approve(t, g, cut, "carol", privs["carol"]); v.Status.State != quorum.StateExecuted {
		t.Fatalf("budget cut: %s %q", v.Status, v.Result)
	}
	raised := quorum.Trust{
		ClientCAs: []string{strings.Repeat("a", 64)},
		Roles: map[string]policy.Role{"relay-a": policy.RoleRelay, "relay-b": policy.RoleRelay,
			o2Officer.Identity: policy.RoleOfficer, o2Operator.Identity: policy.RoleOperator},
		TimeLock: 48 * time.Hour, ProposalTTL: time.Hour + 30*24*time.Hour,
		Freeze: policy.DefaultFreezeRule, QuorumRequired: true,
	}
	st := o2File(t, g, o2Operator, quorum.SetTrust{Trust: raised})
	o2Approve(t, g, st, "bob", privs["bob"])
	if v := o2Approve(t, g, st, "carol", privs["carol"]); v.Status.State != quorum.StateExecuted {
		t.Fatalf("raising the time-lock: %s %q", v.Status, v.Result)
	}
	// Sanity: a proposal filed now is locked for 48h.
	control := o2File(t, g, o2Officer, quorum.SetBudget{Identity: "relay-a", Key: "k1", Budget: policy.Budget{Rate: 1, Burst: 1, Volume: 2, Window: time.Hour}})
	o2Approve(t, g, control, "alice", privs["alice"])
	cv := o2Approve(t, g, control, "bob", privs["bob"])
	if cv.Status.State != quorum.StateTimeLocked || time.Until(cv.Status.Until) < 47*time.Hour {
		t.Fatalf("control: a widening proposal filed after the raise: %s until %s", cv.Status, cv.Status.Until)
	}

	// 3. alice and bob approve P: it now widens (it undoes the cut).
	o2Approve(t, g, p, "alice", privs["alice"])
	v := o2Approve(t, g, p, "bob", privs["bob"])
	if v.Status.State != quorum.StateTimeLocked {
		t.Fatalf("P after the cut: %s, want time-locked (it widens)", v.Status)
	}
	if left := time.Until(v.Status.Until); left < 47*time.Hour {
		t.Errorf("HOLE: P (undoing a budget cut) is locked for %s after the officers raised the time-lock to 48h: "+
			"carol's veto window is the one of P's filing", left.Round(time.Minute))
	}
	// Executing it early must fail: 2h later it is still locked.
	if n, err := g.ExecuteReady(t.Context()); err != nil || n != 0 {
		t.Errorf("ExecuteReady right after the threshold: %d executed, %v", n, err)
	}
}
