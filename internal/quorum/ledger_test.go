package quorum

import (
	"crypto"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/policy"
)

func wantState(t *testing.T, l *Ledger, p Proposal, now time.Time, want State) Status {
	t.Helper()
	st, err := l.Status(p, now)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.State != want {
		t.Fatalf("state = %s, want %s", st, want)
	}
	return st
}

func TestTwoOfThreeNonWideningProposalBecomesReadyOnSecondApproval(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, RotateKey{Name: "messages"})
	propose(t, l, p)
	wantState(t, l, p, t0, StatePending)

	st, err := l.Approve(p, "alice", approval(t, s["alice"], p), t0.Add(time.Minute), Current{})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StatePending || st.Approvals != 1 {
		t.Fatalf("after one approval: %s", st)
	}
	if err := l.MarkExecuted(p, t0.Add(time.Minute)); !errors.Is(err, ErrNotReady) {
		t.Fatalf("execute with one approval: %v, want ErrNotReady", err)
	}
	st, err = l.Approve(p, "carol", approval(t, s["carol"], p), t0.Add(2*time.Minute), Current{})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateReady || st.Widening {
		t.Fatalf("after two approvals: %s", st)
	}
	if err := l.MarkExecuted(p, t0.Add(3*time.Minute)); err != nil {
		t.Fatalf("MarkExecuted: %v", err)
	}
	wantState(t, l, p, t0.Add(3*time.Minute), StateExecuted)
	if err := l.MarkExecuted(p, t0.Add(4*time.Minute)); !errors.Is(err, ErrExecuted) {
		t.Fatalf("second MarkExecuted: %v, want ErrExecuted", err)
	}
}

func TestWideningProposalWaitsOutTimeLock(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, grantPayload())
	propose(t, l, p)
	l.Approve(p, "alice", approval(t, s["alice"], p), t0.Add(time.Hour), Current{})
	second := t0.Add(2 * time.Hour)
	st, err := l.Approve(p, "bob", approval(t, s["bob"], p), second, Current{})
	if err != nil {
		t.Fatal(err)
	}
	until := second.Add(DefaultTimeLock)
	if st.State != StateTimeLocked || !st.Until.Equal(until) {
		t.Fatalf("after quorum: %s, want time-locked until %s", st, until)
	}
	if err := l.MarkExecuted(p, until.Add(-time.Nanosecond)); !errors.Is(err, ErrNotReady) {
		t.Fatalf("execute during time-lock: %v, want ErrNotReady", err)
	}
	wantState(t, l, p, until, StateReady)
	if err := l.MarkExecuted(p, until); err != nil {
		t.Fatalf("MarkExecuted after time-lock: %v", err)
	}
}

func TestVetoCancelsTimeLockedProposal(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, DisclosureOrder{Order: policy.Order{
		CaseRef: "case-1", Key: "messages", ContextMatch: map[string]string{"conversation": "c-1"},
		Recipient: "spiffe://corp/investigator", MaxUses: 3, NotAfter: t0.Add(30 * 24 * time.Hour),
	}})
	propose(t, l, p)
	l.Approve(p, "alice", approval(t, s["alice"], p), t0, Current{})
	l.Approve(p, "bob", approval(t, s["bob"], p), t0, Current{})
	wantState(t, l, p, t0.Add(time.Hour), StateTimeLocked)
	if err := l.Veto(p, "carol", veto(t, s["carol"], p), t0.Add(time.Hour)); err != nil {
		t.Fatalf("Veto: %v", err)
	}
	after := t0.Add(DefaultTimeLock + time.Hour)
	wantState(t, l, p, after, StateVetoed)
	if err := l.MarkExecuted(p, after); !errors.Is(err, ErrVetoed) {
		t.Fatalf("execute vetoed: %v, want ErrVetoed", err)
	}
}

func TestApproveRefusals(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, l *Ledger, s signers, p, other Proposal) (Proposal, string, []byte, time.Time)
		want  error
	}{
		{"unknown officer", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			return p, "mallory", approval(t, s["alice"], p), t0
		}, ErrUnknownOfficer},
		{"forged signature", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			sig := approval(t, s["alice"], p)
			sig[10] ^= 1
			return p, "alice", sig, t0
		}, ErrBadSignature},
		{"another officer's signature", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			return p, "alice", approval(t, s["bob"], p), t0
		}, ErrBadSignature},
		{"veto signature as approval", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			return p, "carol", veto(t, s["carol"], p), t0
		}, ErrBadSignature},
		{"replay from another proposal", func(t *testing.T, l *Ledger, s signers, p, other Proposal) (Proposal, string, []byte, time.Time) {
			return p, "carol", approval(t, s["carol"], other), t0
		}, ErrReplay},
		{"after expiry", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			return p, "alice", approval(t, s["alice"], p), p.Expires
		}, ErrExpired},
		{"same officer twice", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			mustApprove(t, l, p, "alice", approval(t, s["alice"], p))
			return p, "alice", approval(t, s["alice"], p), t0
		}, ErrDuplicateApproval},
		{"already executed", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			mustApprove(t, l, p, "alice", approval(t, s["alice"], p))
			mustApprove(t, l, p, "bob", approval(t, s["bob"], p))
			if err := l.MarkExecuted(p, t0); err != nil {
				t.Fatal(err)
			}
			return p, "carol", approval(t, s["carol"], p), t0
		}, ErrExecuted},
		{"vetoed", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			if err := l.Veto(p, "bob", veto(t, s["bob"], p), t0); err != nil {
				t.Fatal(err)
			}
			return p, "alice", approval(t, s["alice"], p), t0
		}, ErrVetoed},
		{"tampered proposal", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			p.Payload = RotateKey{Name: "payroll"}
			return p, "alice", approval(t, s["alice"], p), t0
		}, ErrProposalMismatch},
		{"unrecorded proposal", func(t *testing.T, l *Ledger, s signers, p, _ Proposal) (Proposal, string, []byte, time.Time) {
			q := proposal(t, RotateKey{Name: "messages"})
			return q, "alice", approval(t, s["alice"], q), t0
		}, ErrUnknownProposal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, s := newLedger(t)
			p := proposal(t, RotateKey{Name: "messages"})
			other := proposal(t, RotateKey{Name: "messages"})
			propose(t, l, p)
			propose(t, l, other)
			before, _ := l.Status(p, t0)
			pp, name, sig, now := tt.setup(t, l, s, p, other)
			if _, err := l.Approve(pp, name, sig, now, Current{}); !errors.Is(err, tt.want) {
				t.Fatalf("Approve: %v, want %v", err, tt.want)
			}
			// Nothing was recorded by the refused call.
			after, _ := l.Status(p, t0)
			if tt.name != "same officer twice" && tt.name != "already executed" && after.Approvals != before.Approvals {
				t.Fatalf("refused approval counted: %d -> %d", before.Approvals, after.Approvals)
			}
		})
	}
}

type signers = map[string]crypto.Signer

func mustApprove(t *testing.T, l *Ledger, p Proposal, name string, sig []byte) {
	t.Helper()
	if _, err := l.Approve(p, name, sig, t0, Current{}); err != nil {
		t.Fatalf("Approve(%s): %v", name, err)
	}
}

func TestVetoRefusals(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, grantPayload())
	other := proposal(t, grantPayload())
	propose(t, l, p)
	propose(t, l, other)
	tests := []struct {
		name    string
		officer string
		sig     []byte
		now     time.Time
		want    error
	}{
		{"unknown officer", "mallory", veto(t, s["alice"], p), t0, ErrUnknownOfficer},
		{"approval signature as veto", "alice", approval(t, s["alice"], p), t0, ErrBadSignature},
		{"another officer's signature", "alice", veto(t, s["carol"], p), t0, ErrBadSignature},
		{"replayed veto", "alice", veto(t, s["alice"], other), t0, ErrReplay},
		{"after expiry", "alice", veto(t, s["alice"], p), p.Expires.Add(time.Second), ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := l.Veto(p, tt.officer, tt.sig, tt.now); !errors.Is(err, tt.want) {
				t.Fatalf("Veto: %v, want %v", err, tt.want)
			}
		})
	}
	wantState(t, l, p, t0, StatePending)
}

func TestProposalExpiresBeforeExecution(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, RotateKey{Name: "messages"})
	propose(t, l, p)
	mustApprove(t, l, p, "alice", approval(t, s["alice"], p))
	mustApprove(t, l, p, "bob", approval(t, s["bob"], p))
	wantState(t, l, p, p.Expires, StateExpired)
	if err := l.MarkExecuted(p, p.Expires); !errors.Is(err, ErrExpired) {
		t.Fatalf("MarkExecuted after expiry: %v", err)
	}
}

func TestProposeRefusals(t *testing.T) {
	l, _ := newLedger(t)
	dup := proposal(t, RotateKey{Name: "messages"})
	propose(t, l, dup)
	short, _ := NewProposal(grantPayload(), "op", t0, DefaultTimeLock)
	future, _ := NewProposal(RotateKey{Name: "k"}, "op", t0.Add(time.Hour), time.Hour)
	badPayload := proposal(t, RotateKey{Name: "messages"})
	badPayload.Payload = RotateKey{}
	tests := []struct {
		name string
		p    Proposal
		now  time.Time
		want error
	}{
		{"duplicate id", dup, t0, ErrDuplicateProposal},
		{"already expired", proposal(t, RotateKey{Name: "m"}), t0.Add(8 * 24 * time.Hour), ErrExpired},
		{"widening expires within time-lock", short, t0, ErrInvalidProposal},
		{"created in the future", future, t0, ErrInvalidProposal},
		{"invalid payload", badPayload, t0, ErrInvalidProposal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := l.Propose(tt.p, Current{Threshold: 2}, tt.now); !errors.Is(err, tt.want) {
				t.Fatalf("Propose: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestRemovedOfficerApprovalNoLongerCounts(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, RotateKey{Name: "messages"})
	propose(t, l, p)
	mustApprove(t, l, p, "alice", approval(t, s["alice"], p))
	mustApprove(t, l, p, "bob", approval(t, s["bob"], p))
	wantState(t, l, p, t0, StateReady)
	set := l.Officers()
	set.Officers = set.Officers[1:] // alice removed
	if err := l.SetOfficers(set); err != nil {
		t.Fatal(err)
	}
	st := wantState(t, l, p, t0, StatePending)
	if st.Approvals != 1 {
		t.Fatalf("approvals = %d, want 1", st.Approvals)
	}
	if _, err := l.Approve(p, "alice", approval(t, s["alice"], p), t0, Current{}); !errors.Is(err, ErrUnknownOfficer) {
		t.Fatalf("removed officer approving: %v", err)
	}
}

func TestLedgerSnapshotRestoreReverifiesSignatures(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, grantPayload())
	q := proposal(t, RotateKey{Name: "messages"})
	propose(t, l, p)
	propose(t, l, q)
	mustApprove(t, l, p, "alice", approval(t, s["alice"], p))
	mustApprove(t, l, p, "carol", approval(t, s["carol"], p))
	if err := l.Veto(q, "bob", veto(t, s["bob"], q), t0); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(l.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	restore := func(raw []byte) (*Ledger, error) {
		var st LedgerState
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, err
		}
		return RestoreLedger(st)
	}
	r, err := restore(raw)
	if err != nil {
		t.Fatalf("RestoreLedger: %v", err)
	}
	wantState(t, r, p, t0, StateTimeLocked)
	wantState(t, r, p, t0.Add(DefaultTimeLock), StateReady)
	wantState(t, r, q, t0, StateVetoed)
	if _, err := r.Approve(p, "alice", approval(t, s["alice"], p), t0, Current{}); !errors.Is(err, ErrDuplicateApproval) {
		t.Fatalf("restored ledger forgot an approval: %v", err)
	}

	tamper := []struct {
		name   string
		mutate func(*LedgerState)
	}{
		{"forged approval", func(st *LedgerState) { st.Records[0].Approvals[0].Signature[5] ^= 1 }},
		{"changed payload", func(st *LedgerState) { st.Records[0].Proposal.Payload = RotateKey{Name: "other"} }},
		{"duplicated approval", func(st *LedgerState) {
			st.Records[0].Approvals = append(st.Records[0].Approvals, st.Records[0].Approvals[0])
		}},
		{"forged veto", func(st *LedgerState) { st.Records[1].Veto.Signature[3] ^= 1 }},
	}
	for _, tt := range tamper {
		t.Run(tt.name, func(t *testing.T) {
			var st LedgerState
			if err := json.Unmarshal(raw, &st); err != nil {
				t.Fatal(err)
			}
			if st.Records[0].Proposal.ID != p.ID && st.Records[0].Proposal.ID != q.ID {
				t.Fatal("unexpected record order")
			}
			// Make record 0 the approved one, record 1 the vetoed one.
			if st.Records[0].Proposal.ID != p.ID {
				st.Records[0], st.Records[1] = st.Records[1], st.Records[0]
			}
			tt.mutate(&st)
			if _, err := RestoreLedger(st); !errors.Is(err, ErrInvalidState) {
				t.Fatalf("RestoreLedger: %v, want ErrInvalidState", err)
			}
		})
	}
}

func TestLedgerTimeLockIsConfigurable(t *testing.T) {
	set, s := officerKeys(t)
	l, err := NewLedger(set, LedgerOptions{TimeLock: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p := proposal(t, Unfreeze{Identity: "spiffe://corp/relay-a", Key: "messages"})
	propose(t, l, p)
	mustApprove(t, l, p, "alice", approval(t, s["alice"], p))
	mustApprove(t, l, p, "bob", approval(t, s["bob"], p))
	wantState(t, l, p, t0.Add(59*time.Minute), StateTimeLocked)
	wantState(t, l, p, t0.Add(time.Hour), StateReady)
}

func TestLedgerKeepsItsOwnCopyOfProposals(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, grantPayload())
	propose(t, l, p)
	mustApprove(t, l, p, "alice", approval(t, s["alice"], p))
	p.Payload.(AddGrant).Grant.ContextMatch["tenant"] = "everyone"
	p.Nonce[0] ^= 1
	snap := l.Snapshot()
	if _, err := RestoreLedger(snap); err != nil {
		t.Fatalf("caller's mutation reached the ledger: %v", err)
	}
	if got := snap.Records[0].Proposal.Payload.(AddGrant).Grant.ContextMatch["tenant"]; got != "acme" {
		t.Fatalf("recorded context match = %q", got)
	}
}

func TestConcurrentApprovalsReachQuorumOnce(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, RotateKey{Name: "messages"})
	propose(t, l, p)
	sigs := map[string][]byte{}
	for name, signer := range s {
		sigs[name] = approval(t, signer, p)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3*4)
	for name, sig := range sigs {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := l.Approve(p, name, sig, t0, Current{})
				errs <- err
			}()
		}
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrDuplicateApproval):
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 3 {
		t.Fatalf("%d approvals recorded, want one per officer (3)", ok)
	}
	if st := wantState(t, l, p, t0, StateReady); st.Approvals != 3 {
		t.Fatalf("approvals = %d", st.Approvals)
	}
}

// A set-budget that narrowed the budget when it was proposed but widens it
// by the time it reaches its threshold (the budget was cut meanwhile) waits
// out the time-lock: widening is decided against the state in force then.
func TestWideningIsDecidedAtThresholdNotAtProposal(t *testing.T) {
	l, s := newLedger(t)
	budget := func(rate float64, burst int, vol int64) policy.Budget {
		return policy.Budget{Rate: rate, Burst: burst, Volume: vol, Window: time.Hour}
	}
	cur := budget(10, 10, 20)
	current := Current{Threshold: 2, Budget: func(string, string) (policy.Budget, bool) { return cur, true }}
	p := proposal(t, SetBudget{Identity: "spiffe://corp/relay", Key: "messages", Budget: budget(9, 9, 19)})
	if err := l.Propose(p, current, t0); err != nil {
		t.Fatal(err)
	}
	if st, _ := l.Status(p, t0); st.Widening {
		t.Fatalf("predicted as widening against 10/20: %s", st)
	}
	l.Approve(p, "alice", approval(t, s["alice"], p), t0.Add(time.Minute), current)
	cur = budget(1, 1, 1) // another proposal cut the budget meanwhile
	st, err := l.Approve(p, "bob", approval(t, s["bob"], p), t0.Add(2*time.Minute), current)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateTimeLocked || !st.Widening {
		t.Fatalf("after quorum against a 1/1 budget: %s, want time-locked and widening", st)
	}
	if err := l.MarkExecuted(p, t0.Add(3*time.Minute)); !errors.Is(err, ErrNotReady) {
		t.Fatalf("executed during its time-lock: %v", err)
	}
	// Once decided, the decision stands even if the budget changes again.
	cur = budget(100, 100, 100)
	if st, _ := l.Decide(p, current, t0.Add(4*time.Minute)); st.State != StateTimeLocked {
		t.Fatalf("decision changed: %s", st)
	}
}

// Removing an officer reduces who can veto: it waits out the time-lock, and
// the officer being removed can still veto during it.
func TestRemovingAnOfficerIsTimeLockedAndTheOfficerMayVeto(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, RemoveOfficer{Name: "carol"})
	propose(t, l, p)
	l.Approve(p, "alice", approval(t, s["alice"], p), t0, Current{Threshold: 2})
	st, err := l.Approve(p, "bob", approval(t, s["bob"], p), t0, Current{Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateTimeLocked {
		t.Fatalf("remove-officer after quorum: %s, want time-locked", st)
	}
	if err := l.Veto(p, "carol", veto(t, s["carol"], p), t0.Add(time.Hour)); err != nil {
		t.Fatalf("the officer being removed could not veto: %v", err)
	}
	wantState(t, l, p, t0.Add(DefaultTimeLock+time.Hour), StateVetoed)
}

// A ledger written before decisions were recorded keeps its pending locks:
// a widening proposal at its threshold is locked from when it got there.
func TestRestoredLegacyWideningRecordKeepsItsLock(t *testing.T) {
	l, s := newLedger(t)
	p := proposal(t, grantPayload())
	propose(t, l, p)
	l.Approve(p, "alice", approval(t, s["alice"], p), t0, Current{})
	l.Approve(p, "bob", approval(t, s["bob"], p), t0.Add(time.Hour), Current{})
	st := l.Snapshot()
	st.Records[0].Decided, st.Records[0].LockedFrom = false, time.Time{}
	r, err := RestoreLedger(st)
	if err != nil {
		t.Fatal(err)
	}
	got := wantState(t, r, p, t0.Add(2*time.Hour), StateTimeLocked)
	if want := t0.Add(time.Hour + DefaultTimeLock); !got.Until.Equal(want) {
		t.Fatalf("lock until %s, want %s", got.Until, want)
	}
}
