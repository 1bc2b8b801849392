// Package keys defines Custody's key registry, its model and its ciphertext
// envelope formats. It is pure Go with no cgo: the registry reaches the HSM
// only through the small Token interface (create, find, destroy, index;
// package hsmtoken implements it over package hsm) and its metadata only
// through a store.Store, so all of it tests without an HSM.
//
// Three kinds of value live here:
//
//   - The key model ([Key], [Version]): a named key, its purpose, and its
//     numbered versions, each of which is one object inside the HSM. Methods
//     on [Key] are the only state transitions (rotate, enable, disable,
//     schedule and cancel destruction, mark destroyed) and the only use checks
//     (ForEncrypt, ForDecrypt, ForSign, ...). A transition either succeeds or
//     returns an error and leaves the Key exactly as it was.
//
//   - The [Registry]: named keys, their metadata persisted in the store with
//     compare-and-swap, and the token objects of their live versions found
//     once at start, so no request searches the token.
//
//   - The envelopes ([Envelope]) returned to clients: a self-describing,
//     versioned blob carrying the key id, key version, IV and the HSM's
//     output, and the canonical additional authenticated data ([CiphertextAAD],
//     [WrappedKeyAAD]) that binds an envelope to its key id, version and
//     encryption context. The byte layout is specified, with test vectors, in
//     docs/envelope.md; TestDocumentedVectors keeps that document and this
//     code in step.
//
// Invariants:
//
//   - This package never holds key material. A [Key] records names, states,
//     HSM object identifiers (CKA_ID, CKA_LABEL) and the attributes read back
//     from the HSM, and nothing from which a key could be derived. It is safe
//     to store, log (as metadata) and serialise to JSON.
//   - Every encoding is canonical: [Parse] accepts exactly one byte string
//     per envelope (Marshal(Parse(b)) == b), and equal contexts encode to
//     equal bytes whatever the map iteration order, with a nil context
//     encoding like an empty one.
//
// Errors are exported sentinels wrapped with %w. They fall into three classes
// that callers can map to status codes with errors.Is: [ErrInvalidArgument]
// (also matched by [ErrMalformed], [ErrInvalidContext], [ErrInvalidName]),
// [ErrFailedPrecondition] (also matched by [ErrWrongPurpose],
// [ErrVersionDisabled], [ErrVersionTooOld], [ErrVersionDestroyed]) and
// [ErrVersionNotFound]. Error messages never contain context values, key
// material or plaintext.
package keys
