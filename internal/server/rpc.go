package server

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/custodyhq/custody/internal/policy"
)

// Report classes: what the transparency report counts a successful call
// (or batch item) as.
type ReportClass int

const (
	// ReportNone: not counted.
	ReportNone ReportClass = iota
	// ReportOpen: yields plaintext or a data key from something sealed
	// under a vault key (decrypt, unwrap, fetch, rewrap, key transport).
	ReportOpen
	// ReportGenerate: yields a new data key.
	ReportGenerate
)

func (c ReportClass) String() string {
	switch c {
	case ReportOpen:
		return "open"
	case ReportGenerate:
		return "generate"
	}
	return "-"
}

// Method declares one RPC, once. The interceptor, batch handling, budgets,
// the transparency report and docs/api.md's table all read it; a test walks
// the registered services and fails on any method missing here.
type Method struct {
	// Service is the full gRPC service name; Name the method.
	Service, Name string
	// Roles may call the method at all; anyone else is refused before the
	// handler runs.
	Roles []policy.Role
	// Op is the policy operation: a key operation (decided per key by the
	// grants in force, when the handler names the key) or, for
	// administrative methods, the name of what the roles allow.
	Op policy.Op
	// Disclosure: a disclosure order may authorise this method where the
	// caller's grants do not. Only methods that read one key's data under
	// one context may set it; never one that changes or deletes anything.
	Disclosure bool
	// Cost is the budget units each call (each item, for a batch) spends;
	// 0 for methods that use no key.
	Cost int
	// Batch: items are authorised, budgeted and audited one by one, each
	// under the name "<Name>[i]".
	Batch bool
	// Report is what a successful call or item counts as in the report.
	Report ReportClass
	// Mutates: the method changes state; the change is made only after an
	// intent record is durable (audit, then act).
	Mutates bool
	// Stream: a server-streaming method.
	Stream bool
	// SelfAudited: served by the seal service, which authenticates callers
	// by the same roles and audits its own calls, because it must answer
	// before the vault is unsealed (no access snapshot, no keys yet); the
	// interceptor never sees these methods.
	SelfAudited bool
}

// FullName is "/<service>/<method>" as gRPC names it.
func (m *Method) FullName() string { return "/" + m.Service + "/" + m.Name }

// KeyOp reports whether the method uses a key under a grant.
func (m *Method) KeyOp() bool { return m.Op.IsKeyOp() }

// Allows reports whether role may call the method.
func (m *Method) Allows(role policy.Role) bool { return slices.Contains(m.Roles, role) }

const (
	svcKeys       = "custody.v1.KeyService"
	svcCrypto     = "custody.v1.CryptoService"
	svcDataKeys   = "custody.v1.DataKeyService"
	svcGovernance = "custody.v1.GovernanceService"
	svcAudit      = "custody.v1.AuditService"
	svcStatus     = "custody.v1.StatusService"
	svcSeal       = "custody.v1.SealService"
)

// Who may call what.
var (
	rolesRelay    = []policy.Role{policy.RoleRelay}
	rolesReaders  = []policy.Role{policy.RoleOperator, policy.RoleOfficer, policy.RoleAuditor}
	rolesKeyAdmin = []policy.Role{policy.RoleOperator}
	rolesPropose  = []policy.Role{policy.RoleOperator, policy.RoleOfficer}
	rolesOfficer  = []policy.Role{policy.RoleOfficer}
	rolesAudit    = []policy.Role{policy.RoleOfficer, policy.RoleAuditor}
	rolesAuditor  = []policy.Role{policy.RoleAuditor}
	rolesAll      = []policy.Role{policy.RoleRelay, policy.RoleOperator, policy.RoleOfficer, policy.RoleAuditor}
)

// Methods is the table of every RPC custodyd serves (the standard health
// service aside, which any authenticated peer may call unaudited).
var Methods = []*Method{
	// CryptoService: relays, per key, under grants and budgets.
	{Service: svcCrypto, Name: "Encrypt", Roles: rolesRelay, Op: policy.OpEncrypt, Cost: 1},
	{Service: svcCrypto, Name: "Decrypt", Roles: rolesRelay, Op: policy.OpDecrypt, Disclosure: true, Cost: 1, Report: ReportOpen},
	{Service: svcCrypto, Name: "GenerateDataKey", Roles: rolesRelay, Op: policy.OpDataKey, Cost: 1, Report: ReportGenerate},
	{Service: svcCrypto, Name: "Unwrap", Roles: rolesRelay, Op: policy.OpUnwrap, Disclosure: true, Cost: 1, Report: ReportOpen},
	{Service: svcCrypto, Name: "Rewrap", Roles: rolesRelay, Op: policy.OpRewrap, Cost: 1, Report: ReportOpen},
	{Service: svcCrypto, Name: "Sign", Roles: rolesRelay, Op: policy.OpSign, Cost: 1},
	{Service: svcCrypto, Name: "Verify", Roles: rolesRelay, Op: policy.OpVerify, Cost: 1},
	{Service: svcCrypto, Name: "GetPublicKey", Roles: rolesRelay, Op: policy.OpPublicKey, Cost: 1},
	{Service: svcCrypto, Name: "Mac", Roles: rolesRelay, Op: policy.OpMAC, Cost: 1},
	{Service: svcCrypto, Name: "VerifyMac", Roles: rolesRelay, Op: policy.OpVerifyMAC, Cost: 1},
	{Service: svcCrypto, Name: "BatchEncrypt", Roles: rolesRelay, Op: policy.OpEncrypt, Cost: 1, Batch: true},
	{Service: svcCrypto, Name: "BatchDecrypt", Roles: rolesRelay, Op: policy.OpDecrypt, Disclosure: true, Cost: 1, Batch: true, Report: ReportOpen},
	{Service: svcCrypto, Name: "BatchUnwrap", Roles: rolesRelay, Op: policy.OpUnwrap, Disclosure: true, Cost: 1, Batch: true, Report: ReportOpen},

	// DataKeyService: stored data keys. A fetch is an unwrap; storing is a
	// data-key generation; deleting needs what a fetch needs but no order
	// can authorise it (an order only ever allows the reads it names).
	{Service: svcDataKeys, Name: "StoreDataKey", Roles: rolesRelay, Op: policy.OpDataKey, Cost: 1, Mutates: true},
	{Service: svcDataKeys, Name: "FetchDataKey", Roles: rolesRelay, Op: policy.OpUnwrap, Disclosure: true, Cost: 1, Report: ReportOpen},
	{Service: svcDataKeys, Name: "ListDataKeyIds", Roles: append(slices.Clone(rolesRelay), rolesReaders...), Op: policy.OpKeyRead},
	{Service: svcDataKeys, Name: "DeleteDataKey", Roles: rolesRelay, Op: policy.OpUnwrap, Cost: 1, Mutates: true},

	// KeyService: metadata for operators, officers and auditors; changes
	// by operators, and only on a vault that is not governed.
	{Service: svcKeys, Name: "CreateKey", Roles: rolesKeyAdmin, Op: policy.OpKeyAdmin, Mutates: true},
	{Service: svcKeys, Name: "GetKey", Roles: rolesReaders, Op: policy.OpKeyRead},
	{Service: svcKeys, Name: "ListKeys", Roles: rolesReaders, Op: policy.OpKeyRead},
	{Service: svcKeys, Name: "RotateKey", Roles: rolesKeyAdmin, Op: policy.OpKeyAdmin, Mutates: true},
	{Service: svcKeys, Name: "EnableKeyVersion", Roles: rolesKeyAdmin, Op: policy.OpKeyAdmin, Mutates: true},
	{Service: svcKeys, Name: "DisableKeyVersion", Roles: rolesKeyAdmin, Op: policy.OpKeyAdmin, Mutates: true},
	{Service: svcKeys, Name: "SetMinDecryptionVersion", Roles: rolesKeyAdmin, Op: policy.OpKeyAdmin, Mutates: true},
	{Service: svcKeys, Name: "ScheduleKeyDestruction", Roles: rolesKeyAdmin, Op: policy.OpKeyAdmin, Mutates: true},
	{Service: svcKeys, Name: "CancelKeyDestruction", Roles: rolesKeyAdmin, Op: policy.OpKeyAdmin, Mutates: true},

	// GovernanceService.
	{Service: svcGovernance, Name: "InitCeremony", Roles: rolesPropose, Op: policy.OpPropose, Mutates: true},
	{Service: svcGovernance, Name: "GetCeremonyTranscript", Roles: rolesReaders, Op: policy.OpGovernanceRead},
	{Service: svcGovernance, Name: "Propose", Roles: rolesPropose, Op: policy.OpPropose, Mutates: true},
	{Service: svcGovernance, Name: "GetProposal", Roles: rolesReaders, Op: policy.OpGovernanceRead},
	{Service: svcGovernance, Name: "ListProposals", Roles: rolesReaders, Op: policy.OpGovernanceRead},
	{Service: svcGovernance, Name: "Approve", Roles: rolesOfficer, Op: policy.OpApprove, Mutates: true},
	{Service: svcGovernance, Name: "Veto", Roles: rolesOfficer, Op: policy.OpVeto, Mutates: true},
	{Service: svcGovernance, Name: "ListOfficers", Roles: rolesReaders, Op: policy.OpGovernanceRead},
	{Service: svcGovernance, Name: "ListGrants", Roles: rolesReaders, Op: policy.OpGovernanceRead},
	{Service: svcGovernance, Name: "ListBudgets", Roles: rolesReaders, Op: policy.OpGovernanceRead},
	{Service: svcGovernance, Name: "ListDisclosureOrders", Roles: rolesReaders, Op: policy.OpGovernanceRead},

	// AuditService: auditors and officers read the log; matching a context
	// to its digest is an auditor's act, audited like any other.
	{Service: svcAudit, Name: "Tail", Roles: rolesAudit, Op: policy.OpAuditRead, Stream: true},
	{Service: svcAudit, Name: "GetLatestCheckpoint", Roles: rolesAudit, Op: policy.OpAuditRead},
	{Service: svcAudit, Name: "GetAuditPublicKey", Roles: rolesAudit, Op: policy.OpAuditRead},
	{Service: svcAudit, Name: "Report", Roles: rolesAudit, Op: policy.OpAuditRead},
	{Service: svcAudit, Name: "DigestContext", Roles: rolesAuditor, Op: policy.OpAuditRead},

	// StatusService: the HSM's state and capabilities, for every role.
	{Service: svcStatus, Name: "GetStatus", Roles: rolesAll, Op: policy.OpStatus},

	// SealService (internal/sealsvc): sealed start. Officers unseal with
	// their shares and confirm a rekey; anyone may see the seal's state.
	{Service: svcSeal, Name: "GetSealStatus", Roles: rolesAll, Op: policy.OpStatus, SelfAudited: true},
	{Service: svcSeal, Name: "GetShare", Roles: rolesOfficer, Op: policy.OpApprove, SelfAudited: true},
	{Service: svcSeal, Name: "Unseal", Roles: rolesOfficer, Op: policy.OpApprove, SelfAudited: true, Mutates: true},
	{Service: svcSeal, Name: "GetRekeyShare", Roles: rolesOfficer, Op: policy.OpApprove, SelfAudited: true},
	{Service: svcSeal, Name: "ConfirmRekey", Roles: rolesOfficer, Op: policy.OpApprove, SelfAudited: true, Mutates: true},
}

var byFullName = func() map[string]*Method {
	m := make(map[string]*Method, len(Methods))
	for _, e := range Methods {
		if _, dup := m[e.FullName()]; dup {
			panic("server: method declared twice: " + e.FullName())
		}
		m[e.FullName()] = e
	}
	return m
}()

// lookup returns the declaration of a full method name.
func lookup(full string) (*Method, bool) {
	m, ok := byFullName[full]
	return m, ok
}

// ReportClassOf is the transparency report's view of an audit record's
// method: batch items ("BatchDecrypt[3]") count as their batch's class, and
// the batch call itself (which only carries the items' tally) counts as
// nothing. Unknown methods count as nothing.
func ReportClassOf(method string) ReportClass {
	name, item := method, false
	if i := strings.IndexByte(method, '['); i > 0 && strings.HasSuffix(method, "]") {
		name, item = method[:i], true
	}
	for _, m := range Methods {
		if m.Name == name && m.Batch == item {
			return m.Report
		}
	}
	return ReportNone
}

// MethodsMarkdown renders Methods as the table docs/api.md carries (a test
// keeps the two equal).
func MethodsMarkdown() string {
	var b strings.Builder
	b.WriteString("| method | roles | policy op | order may authorise | budget cost | audited as | report counts | audit first |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	// (SealService rows are audited by the seal service itself.)
	yes := func(v bool) string {
		if v {
			return "yes"
		}
		return ""
	}
	for _, m := range Methods {
		roles := make([]string, len(m.Roles))
		for i, r := range m.Roles {
			roles[i] = string(r)
		}
		audited := m.Name
		if m.Batch {
			audited = m.Name + ", and each item as " + m.Name + "[i]"
		}
		cost := ""
		if m.Cost > 0 {
			cost = strconv.Itoa(m.Cost)
			if m.Batch {
				cost += " per item"
			}
		}
		report := ""
		if m.Report != ReportNone {
			report = m.Report.String()
		}
		svc := strings.TrimPrefix(m.Service, "custody.v1.")
		fmt.Fprintf(&b, "| `%s.%s` | %s | `%s` | %s | %s | %s | %s | %s |\n", svc, m.Name, strings.Join(roles, ", "), m.Op,
			yes(m.Disclosure), cost, audited, report, yes(m.Mutates))
	}
	return b.String()
}
