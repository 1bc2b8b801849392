package hsm

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// them (checked with errors.Is), plus the PKCS#11 return code where there is one.
var (
	// ErrNotFound: no key (or token) matches.
	ErrNotFound = errors.New("hsm: not found")
	// ErrExists: a key with that label already exists.
	ErrExists = errors.New("hsm: already exists")
	// ErrUnavailable: the token or library cannot be used right now; retry later.
	ErrUnavailable = errors.New("hsm: unavailable")
	// ErrDecrypt: a ciphertext, wrapped key or tag failed authentication or is malformed.
	ErrDecrypt = errors.New("hsm: decryption failed")
	// ErrPermission: the token refused the operation by policy (attribute, usage, login).
	ErrPermission = errors.New("hsm: not permitted")
	// ErrMechanism: the token lacks a mechanism or rejected its parameters.
	ErrMechanism = errors.New("hsm: mechanism not supported")
	// ErrInvalidInput: the caller's input is malformed (size, type, format).
	ErrInvalidInput = errors.New("hsm: invalid input")
	// ErrLogin: the PIN was refused or is locked. Never retried.
	ErrLogin = errors.New("hsm: login failed")
	// ErrKeyPolicy: a created key did not have the attributes custody requires.
	ErrKeyPolicy = errors.New("hsm: key attributes violate custody policy")
	// ErrUnsupported: the token lacks a capability the operation needs (the
	// start-up probe found no mechanism for it). The message names the
	// mechanism; every other operation keeps working.
	ErrUnsupported = errors.New("hsm: token lacks a capability")
)

// errTokenGone marks a failure that the liveness check traced to the token
// itself being gone; it is device-class.
var errTokenGone = errors.New("token is gone")

// class is how the session pool reacts to a PKCS#11 failure.
type class int

const (
	classCaller  class = iota // the request was bad; the session is fine
	classSession              // this session is broken: close it
	classDevice               // the token or library is gone: close it and recover
)

// rv returns the PKCS#11 return code inside err, if any.
func rv(err error) (uint, bool) {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e), true
	}
	return 0, false
}

// classify says how serious a PKCS#11 failure is for the session and module.
func classify(err error) class {
	if errors.Is(err, errTokenGone) {
		return classDevice
	}
	code, ok := rv(err)
	if !ok {
		return classCaller
	}
	switch code {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_OPERATION_ACTIVE, pkcs11.CKR_USER_NOT_LOGGED_IN:
		return classSession
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_SLOT_ID_INVALID,
		pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_HOST_MEMORY, pkcs11.CKR_FUNCTION_FAILED:
		return classDevice
	}
	return classCaller
}

// mapErr wraps a PKCS#11 failure in the sentinel that matches it. what names
// the operation, never data.
func mapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	code, ok := rv(err)
	if !ok {
		return err
	}
	var s error
	switch code {
	case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE,
		pkcs11.CKR_SIGNATURE_INVALID, pkcs11.CKR_SIGNATURE_LEN_RANGE:
		s = ErrDecrypt
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID:
		s = ErrMechanism
	case pkcs11.CKR_BUFFER_TOO_SMALL:
		// The module's size query lied (NSS does for GCM and KWP through
		// miekg/pkcs11): a module quirk, neither a refusal nor bad input.
		s = ErrMechanism
	case pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_KEY_UNEXTRACTABLE,
		pkcs11.CKR_ATTRIBUTE_READ_ONLY, pkcs11.CKR_ATTRIBUTE_SENSITIVE,
		pkcs11.CKR_KEY_NOT_WRAPPABLE, pkcs11.CKR_ACTION_PROHIBITED,
		pkcs11.CKR_USER_NOT_LOGGED_IN:
		s = ErrPermission
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED,
		pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
		s = ErrLogin
	case pkcs11.CKR_DATA_LEN_RANGE, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_KEY_SIZE_RANGE,
		pkcs11.CKR_KEY_TYPE_INCONSISTENT, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID,
		pkcs11.CKR_TEMPLATE_INCONSISTENT, pkcs11.CKR_TEMPLATE_INCOMPLETE,
		pkcs11.CKR_DOMAIN_PARAMS_INVALID, pkcs11.CKR_ARGUMENTS_BAD:
		s = ErrInvalidInput
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		s = ErrNotFound
	default:
		if classify(err) != classCaller {
			s = ErrUnavailable
		} else {
			s = ErrPermission
		}
	}
	return fmt.Errorf("%w: %s: %w", s, what, err)
}
