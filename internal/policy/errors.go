package policy

import "errors"

// Denials returned by Policy.Authorize, Limiter.Take and Order.Use. Callers
// match them with errors.Is; the wrapped message names the identity, key or
// order but never context values.
var (
	// ErrNoRole reports an identity that is unknown or does not hold the role
	// it is acting in.
	ErrNoRole = errors.New("policy: identity does not hold the role")
	// ErrNotGranted reports an operation no grant (or role) allows for this
	// identity and key.
	ErrNotGranted = errors.New("policy: operation not granted")
	// ErrContextMismatch reports a grant or order that would allow the
	// operation but whose context match the request context does not satisfy.
	ErrContextMismatch = errors.New("policy: encryption context does not match")
	// ErrFrozen reports an identity×key frozen after a sustained budget
	// breach; only an Unfreeze (after a quorum) lifts it.
	ErrFrozen = errors.New("policy: identity is frozen on this key")
	// ErrUnknownOp reports an operation name this package does not know.
	ErrUnknownOp = errors.New("policy: unknown operation")
	// ErrKeyMismatch reports a caller with the identity a grant names but
	// not the public key the grant is pinned to (Grant.SPKI). It is always
	// wrapped together with ErrNotGranted.
	ErrKeyMismatch = errors.New("policy: certificate key is not the one the grant is pinned to")
)

// Budget refusals returned by Limiter.Take.
var (
	// ErrRateLimited reports a token bucket without enough tokens.
	ErrRateLimited = errors.New("policy: rate budget exhausted")
	// ErrVolumeExceeded reports a volume cap reached for the current window.
	ErrVolumeExceeded = errors.New("policy: volume budget exhausted")
	// ErrBatchTooLarge reports a batch larger than the burst or the volume
	// cap: it can never fit, so retrying is pointless.
	ErrBatchTooLarge = errors.New("policy: batch larger than budget allows")
	// ErrNoBudget reports an identity×key with no budget configured. Unbudgeted
	// use is refused: there is no unlimited path.
	ErrNoBudget = errors.New("policy: no budget configured")
	// ErrInvalidCount reports a Take of fewer than one unit.
	ErrInvalidCount = errors.New("policy: count must be at least one")
	// ErrNotFrozen reports an Unfreeze of an identity×key that is not frozen.
	ErrNotFrozen = errors.New("policy: identity is not frozen on this key")
)

// Disclosure order refusals returned by Order.Use and Order.Validate.
var (
	// ErrOrderExhausted reports an order whose uses are all spent.
	ErrOrderExhausted = errors.New("policy: disclosure order exhausted")
	// ErrOrderExpired reports an order used at or after its NotAfter time.
	ErrOrderExpired = errors.New("policy: disclosure order expired")
	// ErrInvalidOrder reports an order refused by Validate, such as one with
	// a wildcard or empty context match.
	ErrInvalidOrder = errors.New("policy: invalid disclosure order")
)

// ErrInvalidSpec reports identities, grants or budgets that cannot be built
// into a Policy or Limiter. The message names the field path.
var ErrInvalidSpec = errors.New("policy: invalid specification")

// ErrUnusableGrant reports a grant refused by Grant.CheckUsable: valid on
// its own, but it could never return what it is for.
var ErrUnusableGrant = errors.New("policy: grant can never return a data key")
