// Package seal is the protocol that keeps the HSM user PIN on no disk and
// in no single head. It is pure (no I/O, no clock of its own, no cgo): the
// daemon (internal/sealsvc) and custodyctl share it.
//
// At the key ceremony custodyd replaces the installer's PIN with a fresh
// random one, splits it M-of-N with Shamir (internal/quorum) and encrypts
// share i to officer i alone (HPKE, RFC 9180, base mode: DHKEM(P-256,
// HKDF-SHA256), HKDF-SHA256, AES-256-GCM; the HPKE info binds the vault id,
// the PIN epoch, the share index and the purpose). Each share also has a
// commitment, SHA-256 over a domain, the vault id, the epoch, the index and
// the share, recorded with it and in the signed ceremony transcript, so a
// wrong share is identified before any C_Login is tried (a wrong PIN counts
// towards the token's lockout).
//
// A sealed custodyd makes an ephemeral key pair at start and serves its
// public half and fingerprint. An officer decrypts their share locally,
// re-encrypts it to the ephemeral key (info binds the ephemeral key's
// fingerprint and a one-time server nonce) and signs the submission with
// their own signing key; custodyd accepts it only with an unused nonce, a
// valid signature by the officer who holds that index, and a share that
// matches its commitment. After M accepted shares it combines them.
//
// Invariants: shares and PINs handled here live in secmem Buffers (locked,
// off the Go heap) and are zeroed when done; no function returns or formats
// a share or a PIN in an error; a nonce is used at most once, whatever the
// outcome of the submission that used it.
package seal
