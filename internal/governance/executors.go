package governance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
)

// change is what executing one proposal does. An executor fills it in from
// the state in force; execute then records, persists and applies it.
type change struct {
	// next is the governance state after the change (a clone to edit).
	next State
	// officers, if set, replaces the officer set.
	officers *quorum.OfficerSet
	// timeLock, if set, is the time-lock of proposals from now on.
	timeLock *time.Duration
	// budget, if set, changes budget spend state (a new budget, an
	// unfreeze); it returns the store writes that record the change.
	budget func(b *budgetLedger) ([]store.Op, error)
	// external runs key operations in the HSM and the registry (which
	// persist themselves) after the proposal is recorded as executing.
	external func(ctx context.Context) error
	// proposalID is the proposal being executed.
	proposalID string
}

// executor computes a proposal's change, or refuses it (the proposal is then
// recorded as executed with a failed result: it never runs later).
type executor func(g *Governance, p quorum.Payload, c *change) error

// executors has one entry per proposal kind.
var executors = map[quorum.Kind]executor{
	quorum.KindCreateKey:       execCreateKey,
	quorum.KindRotateKey:       execRotateKey,
	quorum.KindEnableVersion:   execEnableVersion,
	quorum.KindDisableVersion:  execDisableVersion,
	quorum.KindDestroyKey:      execDestroyKey,
	quorum.KindAddGrant:        execAddGrant,
	quorum.KindRemoveGrant:     execRemoveGrant,
	quorum.KindSetBudget:       execSetBudget,
	quorum.KindUnfreeze:        execUnfreeze,
	quorum.KindAddOfficer:      execOfficers,
	quorum.KindRemoveOfficer:   execOfficers,
	quorum.KindSetThreshold:    execOfficers,
	quorum.KindDisclosureOrder: execDisclosureOrder,
	quorum.KindRekeySeal:       execRekeySeal,
	quorum.KindSetTrust:        execSetTrust,
}

// execRekeySeal starts a new PIN and new shares for the current officers
// (the old PIN stays until every new holder confirms; see sealsvc).
func execRekeySeal(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.RekeySeal)
	if g.o.Seal == nil {
		return errors.New("this custodyd has no sealed start")
	}
	officers := g.ledger.Officers()
	c.external = func(ctx context.Context) error { return g.o.Seal.StartRekey(ctx, c.proposalID, officers, v) }
	return nil
}

func execCreateKey(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.CreateKey)
	purpose, err := keys.ParsePurpose(v.Algorithm)
	if err != nil {
		return err
	}
	c.external = func(ctx context.Context) error {
		_, err := g.o.Keys.Create(ctx, v.Name, purpose, "created by a governance proposal")
		return err
	}
	return nil
}

func execRotateKey(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.RotateKey)
	c.external = func(ctx context.Context) error { _, err := g.o.Keys.Rotate(ctx, v.Name); return err }
	return nil
}

func execEnableVersion(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.EnableVersion)
	c.external = func(ctx context.Context) error { _, err := g.o.Keys.Enable(ctx, v.Name, uint32(v.Version)); return err }
	return nil
}

func execDisableVersion(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.DisableVersion)
	c.external = func(ctx context.Context) error {
		_, err := g.o.Keys.Disable(ctx, v.Name, uint32(v.Version))
		return err
	}
	return nil
}

// execDestroyKey schedules destruction of one version, or of every version
// not already destroyed or scheduled.
func execDestroyKey(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.DestroyKey)
	c.external = func(ctx context.Context) error {
		if v.Version > 0 {
			_, err := g.o.Keys.ScheduleDestroy(ctx, v.Name, uint32(v.Version), g.o.DestroyWait)
			return err
		}
		e, err := g.o.Keys.Get(v.Name)
		if err != nil {
			return err
		}
		for _, ver := range e.Key.Versions {
			if ver.State == keys.StateDestroyed || ver.State == keys.StateDestroyScheduled {
				continue
			}
			if _, err := g.o.Keys.ScheduleDestroy(ctx, v.Name, ver.Number, g.o.DestroyWait); err != nil {
				return err
			}
		}
		return nil
	}
	return nil
}

func execAddGrant(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.AddGrant)
	if slices.ContainsFunc(c.next.Grants, func(gr policy.Grant) bool { return gr.ID == v.Grant.ID }) {
		return fmt.Errorf("grant %q already exists", v.Grant.ID)
	}
	c.next.Grants = append(c.next.Grants, v.Grant)
	return nil
}

func execRemoveGrant(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.RemoveGrant)
	i := slices.IndexFunc(c.next.Grants, func(gr policy.Grant) bool { return gr.ID == v.GrantID })
	if i < 0 {
		return fmt.Errorf("no grant %q", v.GrantID)
	}
	c.next.Grants = slices.Delete(c.next.Grants, i, i+1)
	return nil
}

func execSetBudget(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.SetBudget)
	e := BudgetEntry{Identity: v.Identity, Key: v.Key, Budget: v.Budget}
	i := slices.IndexFunc(c.next.Budgets, func(o BudgetEntry) bool { return o.Identity == e.Identity && o.Key == e.Key })
	if i < 0 {
		c.next.Budgets = append(c.next.Budgets, e)
	} else {
		c.next.Budgets[i] = e
	}
	now := g.o.Now()
	c.budget = func(b *budgetLedger) ([]store.Op, error) {
		if err := setBudget(b.lim, e, now); err != nil {
			return nil, err
		}
		if e.Identity == "" {
			// Every identity's units reserved on the key were taken from
			// the shared budget as it was: re-reserve under the new one.
			for s := range b.res {
				if s.Key == e.Key {
					b.dropReservation(s)
				}
			}
			return b.sharedOps(e.Key), nil
		}
		s := policy.Subject{Identity: e.Identity, Key: e.Key}
		b.dropReservation(s)
		return b.subjectOps(s), nil
	}
	return nil
}

// execUnfreeze lifts a freeze. It does not refill the window.
func execUnfreeze(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.Unfreeze)
	if !g.budgets.frozen(v.Identity, v.Key) {
		return fmt.Errorf("identity %q is not frozen on key %q", v.Identity, v.Key)
	}
	c.budget = func(b *budgetLedger) ([]store.Op, error) {
		if err := b.lim.Unfreeze(v.Identity, v.Key); err != nil {
			return nil, err
		}
		s := policy.Subject{Identity: v.Identity, Key: v.Key}
		b.dropReservation(s)
		return b.subjectOps(s), nil
	}
	return nil
}

// execOfficers changes the officer set or M.
func execOfficers(g *Governance, pl quorum.Payload, c *change) error {
	set := g.ledger.Officers()
	switch v := pl.(type) {
	case quorum.AddOfficer:
		set.Officers = append(set.Officers, v.Officer)
	case quorum.RemoveOfficer:
		i := slices.IndexFunc(set.Officers, func(o quorum.Officer) bool { return o.Name == v.Name })
		if i < 0 {
			return fmt.Errorf("no officer %q", v.Name)
		}
		set.Officers = slices.Delete(set.Officers, i, i+1)
	case quorum.SetThreshold:
		set.Threshold = v.Threshold
	}
	if err := set.Validate(g.ledger.Snapshot().Options.AllowDev); err != nil {
		return err
	}
	c.officers = &set
	return nil
}

func execDisclosureOrder(g *Governance, pl quorum.Payload, c *change) error {
	v := pl.(quorum.DisclosureOrder)
	c.next.Orders = append(c.next.Orders, v.Order)
	return nil
}

// execute carries out a Ready proposal, at most once, on the record: an
// intent record first, then the proposal is marked executed in the same
// write that applies its change to the governance state (grants, budgets,
// officers, orders), which take effect only after that write. Key changes
// happen in the HSM and registry, which persist themselves: the proposal is
// marked executed ("executing") first, so a crash midway can never run it
// twice. The marking write is a compare-and-swap on the governance state:
// when another replica changed it first, execute returns errStale having
// changed nothing, and the caller decides again on the state as stored.
// Called with g.mu held.
func (g *Governance) execute(ctx context.Context, actor Actor, p quorum.Proposal) error {
	err := g.executeOnce(ctx, actor, p)
	var why error
	switch {
	case errors.Is(err, errStale):
		why = ErrLostRace
	case errors.Is(err, store.ErrNotLeader):
		why = store.ErrNotLeader
	}
	if why != nil {
		// The intent is on the record; so is that it was not carried out
		// here (best effort: nothing changed either way).
		_ = g.o.Recorder.Record(context.WithoutCancel(ctx), Event{Actor: actor, Action: "execute", Key: proposalKey(p), Outcome: Done,
			Detail: p.ID + " not executed by this replica", Err: why})
	}
	return err
}

func (g *Governance) executeOnce(ctx context.Context, actor Actor, p quorum.Proposal) error {
	now := g.o.Now()
	before := g.ledger.Snapshot()
	c := &change{next: g.st.clone(), proposalID: p.ID}
	exec, ok := executors[p.Kind]
	var refuse error
	if !ok {
		refuse = fmt.Errorf("unsupported proposal kind %q", p.Kind)
	} else {
		refuse = exec(g, p.Payload, c)
	}
	if refuse == nil {
		// The grants must still build into a policy against the identities
		// configured now.
		if _, err := g.build(c.next); err != nil {
			refuse = err
		}
	}
	if err := g.ledger.MarkExecuted(p, now); err != nil {
		return err
	}
	if refuse != nil {
		if err := g.recordOrRestore(ctx, before, Event{Actor: actor, Action: "execute", Key: proposalKey(p),
			Detail: fmt.Sprintf("%s refused: %v", p.ID, refuse)}); err != nil {
			return err
		}
		next := g.st.clone()
		next.Results[p.ID] = ExecResult{Detail: "failed: " + refuse.Error()}
		return g.commit(ctx, before, next)
	}
	if err := g.recordOrRestore(ctx, before, Event{Actor: actor, Action: "execute", Key: proposalKey(p), Detail: p.ID + " " + Summary(p)}); err != nil {
		return err
	}
	if c.officers != nil {
		if err := g.ledger.SetOfficers(*c.officers); err != nil {
			return err
		}
	}
	if c.timeLock != nil {
		l, err := withTimeLock(g.ledger, *c.timeLock)
		if err != nil {
			return err
		}
		g.ledger = l
	}
	if c.external != nil {
		c.next.Results[p.ID] = ExecResult{Detail: "executing (interrupted if this persists)"}
		if err := g.commit(ctx, before, c.next); err != nil {
			return err
		}
		// Marked executed: from here on this replica alone runs it.
		res := ExecResult{OK: true, Detail: "executed " + Summary(p)}
		if err := c.external(ctx); err != nil {
			res = ExecResult{Detail: "failed: " + err.Error()}
		}
		return g.writeResult(ctx, p.ID, res)
	}
	c.next.Results[p.ID] = ExecResult{OK: true, Detail: "executed " + Summary(p)}
	if c.budget == nil {
		return g.commit(ctx, before, c.next)
	}
	// Budget spend is part of the same write: change it under the budget
	// lock, and put it back from a snapshot if the write fails.
	b := g.budgets
	b.mu.Lock()
	defer b.mu.Unlock()
	snap := b.lim.Snapshot()
	ops, err := c.budget(b)
	if err == nil {
		err = g.commitIf(ctx, before, c.next, b.conds(ops), ops)
	}
	if err != nil {
		if l, rerr := policy.RestoreLimiter(snap); rerr == nil {
			b.lim = l
		}
		return err
	}
	b.wrote(ops, g.stRev)
	return nil
}

// writeResult records the outcome of a proposal this replica executed,
// retrying on the state as stored whenever another replica wrote it first
// (the execution itself is done and must not run again). Called with g.mu
// held.
func (g *Governance) writeResult(ctx context.Context, id string, res ExecResult) error {
	for range staleAttempts {
		next := g.st.clone()
		next.Results[id] = res
		err := g.commit(ctx, g.ledger.Snapshot(), next)
		if !errors.Is(err, errStale) {
			return err
		}
		if err := g.refresh(ctx); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: result of proposal %q: the governance state kept changing", ErrUnavailable, id)
}
