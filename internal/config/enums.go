package config

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

// Operation is a crypto operation that a grant can allow on a key. Each
// corresponds to CryptoService RPCs; batch forms need the same operation.
// The strings are those of package policy's key operations (policy.Op).
type Operation string

// Operations. The set is closed; Validate rejects anything else.
const (
	// OpEncrypt allows Encrypt with the key's primary version.
	OpEncrypt Operation = "encrypt"
	// OpDecrypt allows Decrypt of ciphertexts made under the key.
	OpDecrypt Operation = "decrypt"
	// OpDataKey allows GenerateDataKey: a new data key wrapped under the key
	// (and, with a recipient public key, wrapped to the recipient).
	OpDataKey Operation = "datakey"
	// OpUnwrap allows unwrapping a data key previously wrapped under the key.
	OpUnwrap Operation = "unwrap"
	// OpRewrap allows Rewrap: re-encrypting a ciphertext under the key's
	// primary version without returning the plaintext.
	OpRewrap Operation = "rewrap"
	// OpSign allows Sign with the key.
	OpSign Operation = "sign"
	// OpVerify allows Verify with the key.
	OpVerify Operation = "verify"
	// OpPublicKey allows GetPublicKey for the key.
	OpPublicKey Operation = "pubkey"
	// OpMAC allows Mac with the key.
	OpMAC Operation = "mac"
	// OpVerifyMAC allows VerifyMac with the key.
	OpVerifyMAC Operation = "verify-mac"
)

// Operations lists every valid operation.
var Operations = []Operation{
	OpEncrypt, OpDecrypt, OpDataKey, OpUnwrap, OpRewrap,
	OpSign, OpVerify, OpPublicKey, OpMAC, OpVerifyMAC,
}

// Valid reports whether o is one of Operations.
func (o Operation) Valid() bool {
	for _, v := range Operations {
		if o == v {
			return true
		}
	}
	return false
}
