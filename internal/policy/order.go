package policy

import (
	"fmt"
	"strings"
	"time"

	"github.com/custodyhq/custody/internal/names"
)

// MaxOrderUses caps Order.MaxUses. A disclosure order is for a targeted
// investigation; an order for more uses than this is a bulk order under
// another name and is refused.
const MaxOrderUses = 1000

// Order is a disclosure order: a quorum-approved, case-referenced permission
// for one recipient identity to use one key on requests whose encryption
// context matches ContextMatch exactly, at most MaxUses times, before
// NotAfter. There is no wildcard form.
//
// Order is a value the caller persists; Use mutates it and is not safe for
// concurrent use (serialise through the store's compare-and-swap).
type Order struct {
	CaseRef string `json:"case_ref"`
	Key     string `json:"key"`
	// ContextMatch must be non-empty; every pair must be present and equal
	// in the request's context. No key may be empty; no value may be empty,
	// blank or "*".
	ContextMatch map[string]string `json:"context_match"`
	Recipient    string            `json:"recipient"`
	MaxUses      int               `json:"max_uses"`
	NotAfter     time.Time         `json:"not_after"`
	// Used counts successful uses.
	Used int `json:"used"`
}

// Validate refuses orders that are not narrowly targeted.
func (o Order) Validate() error {
	switch {
	case names.ID(o.CaseRef, MaxGrantIDLen) != nil:
		return fmt.Errorf("%w: case_ref: %w", ErrInvalidOrder, names.ID(o.CaseRef, MaxGrantIDLen))
	case names.ID(o.Recipient, MaxIdentityLen) != nil:
		return fmt.Errorf("%w: recipient: %w", ErrInvalidOrder, names.ID(o.Recipient, MaxIdentityLen))
	case o.MaxUses < 1 || o.MaxUses > MaxOrderUses:
		return fmt.Errorf("%w: max_uses: must be between 1 and %d", ErrInvalidOrder, MaxOrderUses)
	case o.Used < 0 || o.Used > o.MaxUses:
		return fmt.Errorf("%w: used: out of range", ErrInvalidOrder)
	case o.NotAfter.IsZero():
		return fmt.Errorf("%w: not_after: required", ErrInvalidOrder)
	case len(o.ContextMatch) == 0:
		return fmt.Errorf("%w: context_match: empty (an order must target a context)", ErrInvalidOrder)
	}
	if err := validKeyName(o.Key); err != nil {
		return fmt.Errorf("%w: key: %v", ErrInvalidOrder, err)
	}
	for k, v := range o.ContextMatch {
		if strings.TrimSpace(k) == "" {
			return fmt.Errorf("%w: context_match: empty key", ErrInvalidOrder)
		}
		// Values are not echoed: they may identify the investigation target.
		if strings.TrimSpace(v) == "" || v == "*" {
			return fmt.Errorf("%w: context_match[%q]: wildcard or empty value", ErrInvalidOrder, k)
		}
	}
	return nil
}

// Remaining returns how many uses are left.
func (o *Order) Remaining() int { return max(0, o.MaxUses-o.Used) }

// Use spends one use of the order for recipient on key with request context
// ctx at time now. It refuses, without spending, an invalid order
// (ErrInvalidOrder), another recipient or key (ErrNotGranted), an expired
// order (ErrOrderExpired, at or after NotAfter), a spent order
// (ErrOrderExhausted) or a context that does not match (ErrContextMismatch).
func (o *Order) Use(recipient, key string, ctx map[string]string, now time.Time) error {
	if err := o.Validate(); err != nil {
		return err
	}
	if recipient != o.Recipient || key != o.Key {
		return fmt.Errorf("%w: order %q does not cover identity %q on key %q", ErrNotGranted, o.CaseRef, recipient, key)
	}
	if !now.Before(o.NotAfter) {
		return fmt.Errorf("%w: order %q", ErrOrderExpired, o.CaseRef)
	}
	if o.Used >= o.MaxUses {
		return fmt.Errorf("%w: order %q", ErrOrderExhausted, o.CaseRef)
	}
	for k, v := range o.ContextMatch {
		if got, ok := ctx[k]; !ok || got != v {
			return fmt.Errorf("%w: order %q", ErrContextMismatch, o.CaseRef)
		}
	}
	o.Used++
	return nil
}
