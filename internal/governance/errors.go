package governance

import "errors"

// Sentinel errors. The server maps them to gRPC codes in one place.
var (
	// ErrRequiresProposal refuses a direct key or grant change once the
	// vault is governed: only an executed proposal may make it.
	ErrRequiresProposal = errors.New("requires an executed proposal")
	// ErrStateRolledBack: the token records a completed ceremony but the
	// store has no governance state (deleted or rolled back).
	ErrStateRolledBack = errors.New("governance: the hsm records a completed key ceremony but the store has no governance state (store deleted, edited or rolled back); refusing to serve")
	// ErrCeremonyDone refuses a second key ceremony.
	ErrCeremonyDone = errors.New("governance: the key ceremony has already run")
	// ErrNoCeremony refuses governance actions before the ceremony.
	ErrNoCeremony = errors.New("governance: no key ceremony has run")
	// ErrNotFound reports a transcript or proposal that does not exist.
	ErrNotFound = errors.New("governance: not found")
	// ErrInvalid reports a request refused before anything changed.
	ErrInvalid = errors.New("governance: invalid request")
	// ErrUnavailable reports that a record or the store could not be
	// written: nothing changed; try again.
	ErrUnavailable = errors.New("governance: unavailable")
	// ErrFull refuses a proposal that would take more of governance than
	// one proposer may hold (see MaxProposalBytes, MaxOpenProposals).
	ErrFull = errors.New("governance: no room for this proposal")
	// ErrMarker reports that the token's ceremony marker cannot be read
	// unambiguously (an HSM error, or more than one marker object).
	ErrMarker = errors.New("governance: ceremony marker unreadable")
	// ErrLostRace is on the record when a replica did not carry out a
	// change it meant to because another replica changed the governance
	// state first (that one's change stands, once).
	ErrLostRace = errors.New("another replica changed the governance state first")
	// errStale means a compare-and-swap lost to another replica: the
	// record changed since this process read it. Nothing was changed; the
	// caller reads the store again and decides again.
	errStale = errors.New("governance: state changed by another replica")
)
