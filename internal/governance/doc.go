// Package governance is Custody's quorum governance: the key ceremony, the
// officer set, proposals and their execution, grants, budgets (with their
// durable spend) and disclosure orders. It publishes what is in force as one
// immutable access Snapshot that the server reads through a single atomic
// pointer.
//
// Invariants:
//
//   - Once the ceremony has run (or the vault is governed from its first
//     start), grants, budgets, officers, orders and keys change only when a
//     proposal executes; a proposal executes at most once.
//   - Audit, then act: every state change is preceded by a durable record
//     (Recorder.Record with an intent outcome). If that record cannot be
//     made, nothing changes and the caller gets UNAVAILABLE.
//   - Every change is persisted to the authenticated store before it takes
//     effect or is reported, and the Snapshot is rebuilt from the store's
//     contents alone (plus the configured identities), so another replica
//     reading the same store builds the same Snapshot.
//   - Whether a proposal widens access is decided against the state in force
//     when it would execute, not when it was made.
//   - Budget spend is durable before the answer: units are reserved in the
//     store in slices and served from the reservation, so a crash can only
//     lose units, never refill them.
//
// Replicas (replica.go): several custodyd processes may share one store.
// Every write of the governance state and of a budget record is a
// compare-and-swap on the revision this process read, so an approval, an
// execution, an order use and a reserved budget slice each happen once
// across replicas; Follow keeps each replica's state, Snapshot and budget
// spend in step with the others' writes; scheduled work is committed
// through the elected replica's leadership (ExecuteReadyVia).
//
// The package holds no *server.Server and imports no gRPC: the server adapts
// its RPCs onto the methods here.
package governance
