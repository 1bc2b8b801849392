// Package quorum implements governance: proposals, officer approvals and
// vetoes, time-locks, and Shamir secret sharing. It is pure: no I/O, no
// clocks of its own (callers pass the time), no cgo.
//
// A Proposal has deterministic canonical bytes (a domain prefix and
// sorted-key JSON) and a SHA-256 Digest. Officers approve by signing
// "custody-approval-v1\n" || digest, and veto by signing
// "custody-veto-v1\n" || digest, with their own Ed25519 or ECDSA P-256 keys.
// A Ledger tracks each proposal from Pending through TimeLocked to Ready and
// Executed, or to Vetoed or Expired.
//
// Invariants: a proposal is Ready only when Threshold distinct current
// officers have approved exactly its digest before it expired, no officer
// has vetoed it, and, if it widens access (see Widening), the time-lock has
// run from the moment the threshold was reached. Signatures are stored with
// the proposals, so a restored Ledger re-verifies every one of them.
package quorum
