package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/governance"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/policy"
)

// access is the one path by which a request uses a key: it checks the key
// name and context, authorises the request's declared operation on the key
// by the grants in force, falls back to a disclosure order only where the
// method's declaration allows it, spends the declared budget cost, and only
// then looks the key up. Authorisation comes first, so an ungranted caller
// learns nothing about which keys exist.
func (s *Server) access(ctx context.Context, name string, encCtx map[string]string) (*keys.Entry, policy.Decision, error) {
	c := callFrom(ctx)
	if err := checkKeyName(name); err != nil {
		return nil, policy.Decision{}, err
	}
	c.key = name
	if err := keys.ValidateContext(encCtx); err != nil {
		return nil, policy.Decision{}, err
	}
	if len(encCtx) > 0 {
		c.ctxDigest = s.digester.Digest(encCtx)
	}
	if c.m == nil || c.snap == nil || !c.m.KeyOp() {
		// Only the interceptor makes calls; a handler reached another way
		// fails closed.
		return nil, policy.Decision{}, fmt.Errorf("%w: %s is not a key operation", policy.ErrNotGranted, c.method)
	}
	d, err := c.snap.AuthorizeCaller(c.identity, c.spki, c.role, c.m.Op, name, encCtx)
	if err != nil {
		d, used, oerr := s.disclosure(ctx, c, name, encCtx, err)
		if !used {
			return nil, d, err
		}
		if oerr != nil {
			return nil, d, oerr
		}
		e, err := s.keys.Get(name)
		return e, d, err
	}
	if c.m.Cost > 0 {
		if err := s.gov.Spend(c.identity, name, c.m.Cost); err != nil {
			return nil, d, err
		}
	}
	e, err := s.keys.Get(name)
	return e, d, err
}

// disclosure applies a disclosure order to a request the caller's grants
// refused, if the method's declaration lets an order authorise it. used is
// false when no order applies (the caller then reports the grant's denial).
// An order use is recorded and persisted before the operation runs, the
// request's record carries the case reference, and the order replaces the
// budget: its own use count is the cap.
func (s *Server) disclosure(ctx context.Context, c *call, key string, encCtx map[string]string, denial error) (d policy.Decision, used bool, err error) {
	if !c.m.Disclosure || c.role != policy.RoleRelay {
		return d, false, nil
	}
	if !errors.Is(denial, policy.ErrNotGranted) && !errors.Is(denial, policy.ErrContextMismatch) {
		return d, false, nil
	}
	if errors.Is(denial, policy.ErrKeyMismatch) {
		// The caller has the name of a relay whose grant is pinned to
		// another key: an order for that name is not for this key either.
		return d, false, nil
	}
	ref, found, err := s.gov.UseOrder(ctx, c.actor(), key, encCtx)
	if !found {
		return d, false, nil
	}
	if err != nil {
		return d, true, err
	}
	c.caseRef = ref
	return policy.Decision{Identity: c.identity, Role: c.role, Op: c.m.Op, Key: key, GrantID: "order:" + ref, AllowPlaintext: true}, true, nil
}

// checkKeyName refuses a missing or malformed key name before anything else.
func checkKeyName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: key_name is required", ErrInvalidArgument)
	}
	if err := keys.ValidateName(name); err != nil {
		return fmt.Errorf("%w: key_name: %v", ErrInvalidArgument, err)
	}
	return nil
}

// governedRefusal refuses a direct change once the vault is governed,
// naming the proposal kind that makes it.
func governedRefusal(ctx context.Context, what, kind string) error {
	if !callFrom(ctx).snap.Governed() {
		return nil
	}
	if kind == "" {
		kind = "..."
	}
	return fmt.Errorf("%w: %s are made by governance proposals (custodyctl proposal create %s)", governance.ErrRequiresProposal, what, kind)
}

// Recorder writes governance's records to the audit log: intent records
// before every governance change, on the record of the request that asked
// for it, and records of scheduled work (a time-lock that matured) under
// the custodyd identity.
type Recorder struct {
	Audit Auditor
	Now   func() time.Time
}

// Record implements governance.Recorder.
func (r Recorder) Record(ctx context.Context, ev governance.Event) error {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	rec := audit.Record{Time: now(), Key: ev.Key, Detail: ev.Action + " " + ev.Detail}
	if c, ok := ctx.Value(callKey{}).(*call); ok {
		rec.Identity, rec.Role, rec.Method = c.identity, string(c.role), c.method
	} else {
		rec.Identity, rec.Role, rec.Method = ev.Actor.Identity, string(ev.Actor.Role), "governance."+ev.Action
	}
	switch {
	case ev.Outcome == governance.Intent:
		rec.Outcome, rec.Code = audit.OutcomeIntent, "-"
	case ev.Err != nil:
		rec.Outcome, rec.Code, rec.Detail = audit.OutcomeError, "Internal", rec.Detail+": "+ev.Err.Error()
	default:
		rec.Outcome, rec.Code = audit.OutcomeOK, "OK"
	}
	_, err := r.Audit.Append(context.WithoutCancel(ctx), rec)
	return err
}
