// Package policy decides who may use which key, how often, and under which
// disclosure orders. It is pure: no I/O, no clocks of its own (callers pass
// the time), no cgo.
//
// Three parts:
//
//   - Policy is an immutable snapshot of identities, roles and grants.
//     Authorize answers one request with precomputed map lookups and
//     allocates nothing when it allows. There are no wildcard keys: a grant
//     names exactly one key, so no single grant can reach every key.
//   - Limiter enforces Budgets (a token bucket plus a volume cap per fixed
//     window) per identity×key and per key, and freezes an identity×key after
//     a sustained breach until Unfreeze is called after a quorum decision.
//     Its whole state, freezes included, survives a restart through
//     Snapshot and Restore, so restarting never refills a budget or thaws a
//     freeze.
//   - Order is a disclosure order: one key, one non-wildcard context match,
//     one recipient, a use count and a deadline.
//
// Invariants: every denial is one of the sentinel errors below under
// errors.Is; no error or decision carries key material, plaintext or
// encryption-context values.
package policy
