package quorum

import "errors"

// Errors. Callers match them with errors.Is.
var (
	// ErrInvalidProposal reports a proposal or payload that fails validation.
	ErrInvalidProposal = errors.New("quorum: invalid proposal")
	// ErrNotCanonical reports bytes that decode but are not the canonical
	// encoding of the proposal they decode to.
	ErrNotCanonical = errors.New("quorum: proposal bytes are not canonical")
	// ErrInvalidOfficers reports an officer or officer set that fails
	// validation.
	ErrInvalidOfficers = errors.New("quorum: invalid officer set")
	// ErrUnknownOfficer reports a name not in the current officer set.
	ErrUnknownOfficer = errors.New("quorum: unknown officer")
	// ErrBadSignature reports a signature that does not verify: forged, or
	// made by another key.
	ErrBadSignature = errors.New("quorum: signature does not verify")
	// ErrReplay reports a signature that is valid, but for another proposal.
	ErrReplay = errors.New("quorum: signature is for another proposal")
	// ErrUnsupportedKey reports a signer or public key that is neither
	// Ed25519 nor ECDSA P-256.
	ErrUnsupportedKey = errors.New("quorum: unsupported key type")
	// ErrDuplicateApproval reports a second approval by the same officer.
	ErrDuplicateApproval = errors.New("quorum: officer has already approved")
	// ErrExpired reports an action on a proposal at or after its expiry.
	ErrExpired = errors.New("quorum: proposal expired")
	// ErrExecuted reports an action on a proposal already executed.
	ErrExecuted = errors.New("quorum: proposal already executed")
	// ErrVetoed reports an action on a vetoed proposal.
	ErrVetoed = errors.New("quorum: proposal vetoed")
	// ErrNotReady reports MarkExecuted on a proposal that is not Ready.
	ErrNotReady = errors.New("quorum: proposal is not ready")
	// ErrUnknownProposal reports a proposal ID the ledger does not hold.
	ErrUnknownProposal = errors.New("quorum: unknown proposal")
	// ErrProposalMismatch reports a proposal whose ID is known but whose
	// content (digest) differs from what was proposed.
	ErrProposalMismatch = errors.New("quorum: proposal differs from the one recorded")
	// ErrDuplicateProposal reports a Propose of an ID already recorded.
	ErrDuplicateProposal = errors.New("quorum: proposal already recorded")
	// ErrInvalidShares reports Split parameters or shares Combine cannot use.
	ErrInvalidShares = errors.New("quorum: invalid shares")
	// ErrInvalidState reports a ledger snapshot that fails verification.
	ErrInvalidState = errors.New("quorum: invalid ledger state")
)
