package config

import "github.com/custodyhq/custody/internal/policy"

// Role is what an identity may do by virtue of who it is. Grants add
// per-key crypto operations on top, for relays only.
type Role string

// Roles. The set is closed; Validate rejects anything else.
const (
	// RoleRelay uses keys through grants: data keys, unwrap, encrypt, sign.
	RoleRelay Role = "relay"
	// RoleOperator runs and monitors the service and proposes changes; it
	// cannot approve alone and cannot decrypt.
	RoleOperator Role = "operator"
	// RoleOfficer approves or vetoes proposals with its own signing key.
	RoleOfficer Role = "officer"
	// RoleAuditor reads the audit log and checkpoints.
	RoleAuditor Role = "auditor"
)

// Roles lists every valid role.
var Roles = []Role{RoleRelay, RoleOperator, RoleOfficer, RoleAuditor}

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool {
	for _, v := range Roles {
		if r == v {
			return true
		}
	}
	return false
}

// Operation is a crypto operation that a grant can allow on a key. The set
// is package policy's key operations (policy.KeyOps); the constants below are
// those, typed for the config file.
type Operation string

// Operations, as policy defines them.
const (
	OpEncrypt   = Operation(policy.OpEncrypt)
	OpDecrypt   = Operation(policy.OpDecrypt)
	OpDataKey   = Operation(policy.OpDataKey)
	OpUnwrap    = Operation(policy.OpUnwrap)
	OpRewrap    = Operation(policy.OpRewrap)
	OpSign      = Operation(policy.OpSign)
	OpVerify    = Operation(policy.OpVerify)
	OpPublicKey = Operation(policy.OpPublicKey)
	OpMAC       = Operation(policy.OpMAC)
	OpVerifyMAC = Operation(policy.OpVerifyMAC)
)

// Operations lists every valid operation (policy.KeyOps, in its order).
var Operations = func() []Operation {
	out := make([]Operation, len(policy.KeyOps))
	for i, op := range policy.KeyOps {
		out[i] = Operation(op)
	}
	return out
}()

// Valid reports whether o is one of Operations.
func (o Operation) Valid() bool { return policy.Op(o).IsKeyOp() }
