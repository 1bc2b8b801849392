// Package hsm keeps Custody's keys in custody inside a PKCS#11 token and is
// the only package that imports github.com/miekg/pkcs11.
//
// Invariants:
//
//   - Every key is created from one enforced template (templates.go): token,
//     private, sensitive, non-extractable, not modifiable, with only the usages
//     its purpose needs, a random CKA_ID and a CKA_LABEL. Its attributes are
//     read back after creation; a key that does not match is destroyed and the
//     creation fails. No function in this package returns the value of a key
//     held in custody: master keys never leave the token.
//   - A PKCS#11 session is used by exactly one goroutine at a time. Every call
//     goes through Module.withSession, which takes a session from a bounded
//     pool, honours the caller's context while waiting, and closes (never
//     reuses) a session that failed with a session or device error.
//   - One login serves the whole process. When the token goes away the module
//     fails fast with ErrUnavailable and re-initialises itself in the
//     background (C_Finalize, C_Initialize, login, re-find keys) with backoff;
//     CKR_PIN_INCORRECT and CKR_PIN_LOCKED are never retried.
//   - The PIN is held only to log in again after recovery; it never appears in
//     an error, a log line or a String method.
//   - Nothing about one vendor's PKCS#11 habits is assumed. Every
//     (re)initialisation probes the token with scratch keys of its own
//     (caps.go): which mechanism is RFC 5649, whether GCM takes the caller's
//     IV or writes its own back, which OAEP hash and HMAC key type work, which
//     codes mean a bad tag, and whether non-extractable keys stay in. No
//     caller's input ever changes these decisions. What cannot be probed
//     safely comes from a vendor Profile; an attribute a profile cannot set is
//     recorded on the key as unverified, never passed silently, and the
//     attributes custody rests on (token, sensitive, never extractable) are
//     never waived. A missing capability fails only the operations that need
//     it, with ErrUnsupported naming the mechanism.
//   - Session objects (transient data keys, imported recipient keys) are
//     destroyed on every path. On a module that never frees them
//     (Config.RecycleAfterSessionObjects) the module recycles itself through
//     the recovery path after a set number (recycle.go): calls wait at a
//     gate, bounded by their context, and none fails. Data keys a caller
//     receives in plaintext need no object at all (sealed.go).
package hsm
