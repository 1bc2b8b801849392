package seal

import "errors"

// Sentinel errors. Errors from this package wrap exactly one of them.
var (
	// ErrFormat: a key, record or message is malformed.
	ErrFormat = errors.New("seal: malformed")
	// ErrReplayed: the submission's nonce was never issued, already used
	// or expired.
	ErrReplayed = errors.New("seal: nonce unknown, used or expired (replayed or stale submission)")
	// ErrNotOfficer: the submission is not signed by an officer who holds a
	// share of this vault.
	ErrNotOfficer = errors.New("seal: not signed by a share holder")
	// ErrWrongTarget: the submission was made for another vault, PIN
	// epoch, share index or ephemeral key (another custodyd, or an earlier
	// start).
	ErrWrongTarget = errors.New("seal: submission is for another vault, epoch, share or unseal key")
	// ErrBadShare: the share does not decrypt or does not match its
	// commitment.
	ErrBadShare = errors.New("seal: share does not decrypt or does not match its commitment")
	// ErrDuplicate: this share was already accepted.
	ErrDuplicate = errors.New("seal: share already accepted")
	// ErrThreshold: the holders or threshold cannot make a valid split.
	ErrThreshold = errors.New("seal: invalid threshold or holders")
)
