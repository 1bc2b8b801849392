package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/custodyhq/custody/internal/policy"
)

// SetRoles installs the identity → role table (from configuration).
func (s *Server) SetRoles(roles map[string]policy.Role) {
	m := make(map[string]policy.Role, len(roles))
	for k, v := range roles {
		m[k] = v
	}
	s.roles = m
}

// authorize decides a key operation for the caller and records the key in
// the request's audit record. It must run before the key is looked up, so
// that an ungranted caller cannot tell which keys exist.
func (s *Server) authorize(ctx context.Context, op policy.Op, key string, encCtx map[string]string) (policy.Decision, error) {
	c := callFrom(ctx)
	c.key = key
	return s.policy.Load().Authorize(c.identity, c.role, op, key, encCtx)
}

// authorizeAdmin decides an administrative operation (no key, no grant).
func (s *Server) authorizeAdmin(ctx context.Context, op policy.Op) error {
	c := callFrom(ctx)
	_, err := s.policy.Load().Authorize(c.identity, c.role, op, "", nil)
	return err
}

// spend takes n units of the caller's budget on key. Without a limiter
// (budgets not configured) nothing is spent.
func (s *Server) spend(ctx context.Context, key string, n int) error {
	l := s.limiter.Load()
	if l == nil {
		return nil
	}
	c := callFrom(ctx)
	ok, retry, reason := l.Take(c.identity, key, n, s.now())
	if ok {
		return nil
	}
	if s.gov != nil && errors.Is(reason, policy.ErrFrozen) {
		s.gov.kickPersist() // a freeze must survive a restart
	}
	return &budgetError{err: reason, retryAfter: retry}
}

func requireName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: key_name is required", ErrInvalidArgument)
	}
	return nil
}
