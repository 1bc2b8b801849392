package governance

import (
	"context"
	"errors"

	"github.com/custodyhq/custody/internal/policy"
)

// UseOrder spends one use of a disclosure order that lets identity read key
// under encCtx (a decrypt, unwrap or fetch that its grants refused; the
// server decides which methods an order may authorise). found is false when
// no order names identity on key at all, so the caller reports its own
// denial. The use is recorded and persisted before it is reported.
func (g *Governance) UseOrder(ctx context.Context, actor Actor, key string, encCtx map[string]string) (caseRef string, found bool, err error) {
	if !g.Snapshot().HasOrder(actor.Identity, key) {
		return "", false, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.sync(ctx); err != nil {
		return "", true, err
	}
	err = g.retry(ctx, func() error {
		caseRef, found, err = g.useOrder(ctx, actor, key, encCtx)
		return err
	})
	return caseRef, found, err
}

// useOrder is one attempt of UseOrder; errStale when another replica
// changed the state first (an order's uses are counted once across
// replicas). Called with g.mu held.
func (g *Governance) useOrder(ctx context.Context, actor Actor, key string, encCtx map[string]string) (caseRef string, found bool, err error) {
	if !g.st.Ceremony {
		return "", false, nil
	}
	now := g.o.Now()
	var firstErr error
	for i, o := range g.st.Orders {
		if o.Recipient != actor.Identity || o.Key != key {
			continue
		}
		found = true
		try := o
		if err := try.Use(actor.Identity, key, encCtx, now); err != nil {
			if firstErr == nil || errors.Is(firstErr, policy.ErrOrderExhausted) || errors.Is(firstErr, policy.ErrOrderExpired) {
				firstErr = err
			}
			continue
		}
		if err := g.record(ctx, Event{Actor: actor, Action: "order-use", Key: key, Detail: "case " + o.CaseRef}); err != nil {
			return "", true, err
		}
		next := g.st.clone()
		next.Orders[i] = try
		if err := g.commit(ctx, g.ledgerState(), next); err != nil {
			return "", true, err
		}
		return o.CaseRef, true, nil
	}
	return "", found, firstErr
}
