// Package custodyv1 is Custody's gRPC API, version 1 (proto package
// custody.v1): KeyService manages named keys and their versions, and
// CryptoService performs encryption, data-key, signing and MAC operations
// with keys that never leave the HSM.
//
// The *.pb.go files are generated from the .proto files beside them by
// api/gen.sh (make proto) and checked in; edit the .proto files, never the
// generated code.
//
// Invariants of the API: no request or response carries master-key material
// (a KeyVersion describes an HSM object, it never contains one), and there is
// no bulk operation beyond per-item batches in which every item is
// authorised, budgeted and audited as a single call would be.
package custodyv1
