// Package client is the Go client library for relays that use Custody, the
// hardware-backed key vault: mutual-TLS connections to custodyd with a
// retry policy, envelope encryption with data keys, a cache of unwrapped
// data keys, chunked stream encryption, and key transport to a relay's own
// RSA key.
//
// # Connecting
//
// Dial takes the CA, client certificate and key files; TLS 1.3 with a
// client certificate is the only transport. Every unary call is bounded by
// Config.Timeout (or the caller's earlier deadline) and retried, with
// jittered exponential backoff, on UNAVAILABLE only — never on any other
// code, and never past the deadline or Config.MaxAttempts. All Custody RPCs
// are safe to repeat (crypto calls change no state; lifecycle calls set a
// state a repeat sets again; CreateKey repeated fails with ALREADY_EXISTS)
// except KeyService.RotateKey, which is never retried. A refused budget
// (RESOURCE_EXHAUSTED) comes back as a *BudgetError carrying the server's
// retry hint; it is never retried automatically. A client certificate
// custodyd does not accept (another CA, expired) would look like an outage
// (UNAVAILABLE: "remote error: tls: …" or "broken pipe"); it comes back as
// UNAUTHENTICATED, matching ErrCertificateRefused, with the issuer of the
// certificate and the CAs custodyd trusts, and is never retried.
//
// # Envelope encryption
//
// Seal asks custodyd for a new data key per message (GenerateDataKey),
// encrypts locally with AES-256-GCM and returns one self-contained message:
// version byte, wrapped data key, nonce, ciphertext. Open unwraps the data
// key through custodyd (authorised, budgeted and audited there) and
// decrypts. For a conversation, SealerFor fetches one data key and seals
// each message with a counter nonce, up to Config.ConversationLimit
// messages; readers unwrap it once and find it in the cache afterwards.
// SealStream and OpenStream do the same for payloads of any size in the
// chunked CSTY format of docs/file-format.md, also written by custodyctl.
//
// # Coalescing
//
// With Config.CoalesceDecrypts, Decrypt calls made concurrently on one
// Client share BatchDecrypt requests: a call made while fewer than two
// coalesced requests are in flight is sent at once; otherwise it joins the
// batch being gathered, sent when full (CoalesceMaxBatch), when a request
// in flight completes, or after CoalesceLinger (default 500 µs),
// whichever comes first. Each call still gets its own result or error, and
// custodyd authorises, budgets and audits each item on its own.
//
// # Invariants
//
// Plaintext data keys live only as long as one operation, in the cache, or
// in a Sealer, and are zeroed when they leave: after use, on eviction or
// expiry, and on Client.Close or Sealer.Close. The cache is bounded in
// count (LRU) and time (TTL). No error or log carries key material,
// plaintext or anything read from a key file.
//
// The encryption context is not secret: custodyd records it in its audit
// log. It must be presented, identical, to open what was sealed under it.
package client
