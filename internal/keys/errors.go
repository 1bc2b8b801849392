package keys

import "errors"

// Error classes. Every error returned by this package matches exactly one of
// ErrInvalidArgument, ErrFailedPrecondition or ErrVersionNotFound under
// errors.Is.
var (
	// ErrInvalidArgument reports a request that is wrong whatever the state of
	// the key: a bad name, context, envelope or parameter.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrFailedPrecondition reports a request that is well-formed but refused
	// in the key's current state (for example disabling the primary version).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrVersionNotFound reports a key version number the key does not have.
	ErrVersionNotFound = errors.New("key version not found")
)

// Precise sentinels, each belonging to one class above.
var (
	// ErrMalformed reports an envelope that Parse or Marshal refuses. The
	// wrapped error is a *MalformedError naming the field.
	ErrMalformed error = &classError{msg: "malformed envelope", class: ErrInvalidArgument}
	// ErrInvalidContext reports an encryption context that breaks the limits
	// in ValidateContext.
	ErrInvalidContext error = &classError{msg: "invalid encryption context", class: ErrInvalidArgument}
	// ErrInvalidName reports a key name refused by ValidateName.
	ErrInvalidName error = &classError{msg: "invalid key name", class: ErrInvalidArgument}

	// ErrWrongPurpose reports a use the key's purpose does not allow, such as
	// encrypting with a signing key.
	ErrWrongPurpose error = &classError{msg: "key purpose does not allow this operation", class: ErrFailedPrecondition}
	// ErrVersionDisabled reports a version that exists but is disabled or
	// scheduled for destruction.
	ErrVersionDisabled error = &classError{msg: "key version is disabled", class: ErrFailedPrecondition}
	// ErrVersionTooOld reports a version below the key's minimum decrypt
	// version.
	ErrVersionTooOld error = &classError{msg: "key version is below the minimum allowed", class: ErrFailedPrecondition}
	// ErrVersionDestroyed reports a version whose HSM object has been
	// destroyed.
	ErrVersionDestroyed error = &classError{msg: "key version is destroyed", class: ErrFailedPrecondition}
)

// classError is a sentinel that also matches its class under errors.Is.
type classError struct {
	msg   string
	class error
}

func (e *classError) Error() string { return e.msg }
func (e *classError) Unwrap() error { return e.class }

// MalformedError says which field of an envelope was refused and why. It
// matches ErrMalformed (and so ErrInvalidArgument) under errors.Is. Its
// message never includes the envelope's bytes.
type MalformedError struct {
	// Field is the envelope field at fault: "format", "key_id", "version",
	// "iv", "body", "tag" or "length".
	Field string
	// Reason is a short lower-case explanation.
	Reason string
}

func (e *MalformedError) Error() string {
	return ErrMalformed.Error() + ": " + e.Field + ": " + e.Reason
}

// Unwrap returns ErrMalformed.
func (e *MalformedError) Unwrap() error { return ErrMalformed }
