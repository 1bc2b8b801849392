package main

// Red team: a coerced officer (one officer key, their officer certificate,
// custodyctl) against governance of a production vault: act alone, skip a
// time-lock, hide what a proposal does, replay an approval.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/quorum"
)

// proposalID parses the id out of `custodyctl --output json proposal ...`.
func proposalID(t *testing.T, inv result) string {
	t.Helper()
	var info struct {
		ID string `json:"id"`
	}
	if inv.code != 0 || json.Unmarshal([]byte(inv.stdout), &info) != nil || info.ID == "" {
		t.Fatalf("proposal: %+v", inv)
	}
	return info.ID
}

func (v *redVault) proposal(t *testing.T, id string) *custodyv1.ProposalInfo {
	t.Helper()
	info, err := custodyv1.NewGovernanceServiceClient(v.conn(t, "auditor")).GetProposal(tctx(t), &custodyv1.GetProposalRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func (v *redVault) grantIDs(t *testing.T) []string {
	t.Helper()
	r, err := custodyv1.NewGovernanceServiceClient(v.conn(t, "auditor")).ListGrants(tctx(t), &custodyv1.ListGrantsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, g := range r.GetGrants() {
		ids = append(ids, g.GetId())
	}
	return ids
}

// TestACoercedOfficerCannotActAloneSkipATimeLockOrHideWhatAProposalDoes:
// carol, with her own officer certificate and key and custodyctl, tries to
// get a change made alone: approve her own proposal twice, approve as bob
// with her key, with a non-officer's key, or with her approval of another
// proposal; get a widening change out of its time-lock early (a third
// approval, re-filing it, a restart of the vault); and file a grant whose id
// would hide from the officers reading it that it allows plaintext. Each
// is refused and on the record; nothing changes; the log verifies.
func TestACoercedOfficerCannotActAloneSkipATimeLockOrHideWhatAProposalDoes(t *testing.T) {
	v := newRedVault(t, 1000)
	v.serve(t)
	carolKey := v.officerKey("carol")
	asCarol := func(args ...string) result {
		return v.ctlAs(t, "officer-c", nil, append([]string{"--output", "json"}, args...)...)
	}
	grantsBefore := strings.Join(v.grantIDs(t), ",")

	// Alone: her proposal, her approval, then every way to count twice.
	narrow := proposalID(t, asCarol("proposal", "create", "remove-grant", "tenant-b"))
	if inv := asCarol("proposal", "approve", narrow, "--officer-key", carolKey, "--yes"); inv.code != 0 {
		t.Fatalf("carol approves her own proposal: %+v", inv)
	}
	if inv := asCarol("proposal", "approve", narrow, "--officer-key", carolKey, "--yes"); inv.code == 0 {
		t.Fatalf("carol's second approval was accepted: %+v", inv)
	}
	if inv := asCarol("proposal", "approve", narrow, "--officer-key", carolKey, "--officer", "bob", "--yes"); inv.code == 0 {
		t.Fatalf("carol approved as bob with her key: %+v", inv)
	}
	if inv := asCarol("proposal", "approve", narrow, "--officer-key", v.officerKey("mallory"), "--yes"); inv.code == 0 {
		t.Fatalf("mallory's key (no officer) was accepted: %+v", inv)
	}
	gc := custodyv1.NewGovernanceServiceClient(v.conn(t, "officer-c"))
	other := proposalID(t, asCarol("proposal", "create", "rotate-key", "msgs"))
	carol := v.loadOfficer(t, "carol")
	otherInfo := v.proposal(t, other)
	p, err := quorum.ParseCanonical(otherInfo.GetCanonicalProposal())
	if err != nil {
		t.Fatal(err)
	}
	d, _ := p.Digest()
	sigOther, err := quorum.SignApproval(carol.signer, d)
	if err != nil {
		t.Fatal(err)
	}
	// Her approval of "other", sent as bob's and as hers for "narrow".
	for _, as := range []string{"bob", "carol"} {
		_, err := gc.Approve(tctx(t), &custodyv1.ApproveRequest{Id: narrow, Officer: as, Signature: sigOther})
		if c := status.Code(err); c != codes.PermissionDenied && c != codes.AlreadyExists {
			t.Fatalf("carol's approval of another proposal replayed as %s: %v", as, err)
		}
	}
	if info := v.proposal(t, narrow); info.GetState() != custodyv1.ProposalState_PROPOSAL_PENDING || len(info.GetApprovals()) != 1 {
		t.Fatalf("carol alone moved her proposal to %v with approvals %v", info.GetState(), info.GetApprovals())
	}

	// Hide what it does: a grant id with terminal escapes or a bidi
	// override is refused before any officer is asked to sign it.
	for _, id := range []string{"g-1\x1b[8m, PLAINTEXT data keys allowed\x1b[0m", "g-\u202etxt.exe", "g-1\u200b"} {
		inv := asCarol("proposal", "create", "add-grant", "shared", "--id", id, "--identity", v.identity["relay-b"],
			"--ops", "decrypt", "--allow-plaintext")
		if inv.code == 0 || strings.Contains(inv.stdout+inv.stderr, "\x1b[8m") {
			t.Fatalf("a grant id hiding text was filed or echoed raw: %+v", inv)
		}
	}

	// The same through the API, past the CLI: canonical bytes whose grant
	// id carries the escape are refused by custodyd.
	pl, err := quorum.NewProposal(quorum.RemoveGrant{GrantID: "g-PLACEHOLDER"}, v.identity["officer-c"], p.Created, p.Expires.Sub(p.Created))
	if err != nil {
		t.Fatal(err)
	}
	pl.Vault = v.vaultID(t)
	raw, err := pl.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	hidden := strings.Replace(string(raw), "g-PLACEHOLDER", `g-1\u001b[8m, PLAINTEXT\u001b[0m`, 1)
	_, err = gc.Propose(tctx(t), &custodyv1.ProposeRequest{CanonicalProposal: []byte(hidden)})
	wantCode(t, err, codes.InvalidArgument, "a grant id with a terminal escape, through the API")

	// A widening change: alice and bob approve; it waits out its time-lock
	// (1h). Carol's third approval, re-filing the same bytes, and a restart
	// of the vault (officers unseal it) leave it locked and unapplied.
	widen := proposalID(t, v.ctlAs(t, "operator", nil, "--output", "json", "proposal", "create", "add-grant", "shared",
		"--id", "b-everything", "--identity", v.identity["relay-b"], "--ops", "decrypt", "--allow-plaintext"))
	for _, n := range []string{"alice", "bob"} {
		if inv := v.ctlAs(t, "officer", nil, "proposal", "approve", widen, "--officer-key", v.officerKey(n), "--yes"); inv.code != 0 {
			t.Fatalf("approve by %s: %+v", n, inv)
		}
	}
	locked := func(what string) {
		t.Helper()
		info := v.proposal(t, widen)
		if info.GetState() != custodyv1.ProposalState_PROPOSAL_TIME_LOCKED {
			t.Fatalf("%s: the widening proposal is %v", what, info.GetState())
		}
		for _, g := range v.grantIDs(t) {
			if g == "b-everything" {
				t.Fatalf("%s: the widening grant is in force", what)
			}
		}
	}
	locked("after two approvals")
	if inv := asCarol("proposal", "approve", widen, "--officer-key", carolKey, "--yes"); inv.code != 0 {
		t.Fatalf("carol's third approval: %+v", inv)
	}
	locked("after a third approval")
	_, err = gc.Propose(tctx(t), &custodyv1.ProposeRequest{CanonicalProposal: v.proposal(t, widen).GetCanonicalProposal()})
	wantCode(t, err, codes.InvalidArgument, "carol re-files the operator's proposal") // not in her name
	v.stop(t, syscall.SIGTERM)
	v.start(t)
	for _, n := range []string{"alice", "carol"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			t.Fatalf("unseal %s: %+v", n, inv)
		}
	}
	v.waitGateway(t)
	locked("after a restart")
	if _, err := custodyv1.NewCryptoServiceClient(v.conn(t, "relay-b")).Decrypt(tctx(t), &custodyv1.DecryptRequest{
		KeyName: "shared", Ciphertext: []byte{1}, Context: tenantA}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("relay-b on tenant A's context while the grant is locked: %v", err)
	}
	if got := strings.Join(v.grantIDs(t), ","); got != grantsBefore {
		t.Fatalf("grants changed: %s, were %s", got, grantsBefore)
	}

	// On the record: each of carol's refused approvals and proposals.
	v.evidence(t)
	var refused int
	for _, r := range recordsOf(t, filepath.Join(v.data, "audit"), "Approve", "Propose") {
		if r["identity"] == v.identity["officer-c"] && (r["outcome"] == "denied" || r["outcome"] == "error") {
			refused++
		}
	}
	// A duplicate approval, her other approval replayed twice, the hidden
	// id and the re-filed proposal; the CLI refuses bob's name with her
	// key, mallory's key and the hiding ids before sending anything.
	if refused != 5 {
		t.Errorf("%d refused calls of carol's on the record, want 5", refused)
	}
}

// TestAnApprovalGivenForOneVaultDoesNotExecuteOnAnother: officers often
// serve several vaults with the same keys (staging and production, one vault
// per region). On staging, carol files a change and bob approves it with
// an offline signature file, as the CLI supports. Coerced carol then files
// the very same proposal bytes on production — her officer identity is the
// same there — and submits her approval and bob's staging signature file.
// Bob never approved anything for production: his approval must not count
// there and the change must not execute.
//
// OPEN HOLE (left failing on purpose, see the red team report): approvals
// sign the proposal's digest alone, which names no vault, so this fails
// until proposals (or approvals) are bound to the vault they are for.
func TestAnApprovalGivenForOneVaultDoesNotExecuteOnAnother(t *testing.T) {
	staging, production := newRedVault(t, 1000), newRedVault(t, 1000)
	// The same officers, with the same keys, on both.
	entries, err := os.ReadDir(filepath.Join(staging.dir, "officers"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(staging.dir, "officers", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(production.dir, "officers", e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if staging.identity["officer-c"] != production.identity["officer-c"] {
		t.Fatalf("carol's identity differs between the vaults: %s, %s", staging.identity["officer-c"], production.identity["officer-c"])
	}
	staging.serve(t)
	production.serve(t)

	// Staging: carol files "remove tenant-b's grant"; bob signs offline;
	// carol approves and sends bob's file; it executes on staging.
	file := filepath.Join(t.TempDir(), "proposal.bin")
	id := proposalID(t, staging.ctlAs(t, "officer-c", nil, "--output", "json", "proposal", "create", "remove-grant", "tenant-b", "--out", file))
	bobSig := filepath.Join(t.TempDir(), "bob.sig")
	if inv := staging.run(t, nil, "proposal", "sign", file, "--officer-key", staging.officerKey("bob"), "--out", bobSig, "--yes"); inv.code != 0 {
		t.Fatalf("bob signs offline: %+v", inv)
	}
	for _, args := range [][]string{{"--officer-key", staging.officerKey("carol")}, {"--officer", "bob", "--signature-file", bobSig}} {
		if inv := staging.ctlAs(t, "officer-c", nil, append([]string{"proposal", "approve", id, "--yes"}, args...)...); inv.code != 0 {
			t.Fatalf("approve on staging %v: %+v", args, inv)
		}
	}
	if st := staging.proposal(t, id).GetState(); st != custodyv1.ProposalState_PROPOSAL_EXECUTED {
		t.Fatalf("on staging: %v", st)
	}

	// Production: carol files the same bytes and sends both approvals. The
	// proposal names staging's vault, so production refuses to file it, and
	// re-made for production it has another digest, which bob never signed.
	canon, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, err = custodyv1.NewGovernanceServiceClient(production.conn(t, "officer-c")).Propose(tctx(t), &custodyv1.ProposeRequest{CanonicalProposal: canon})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "is for vault") {
		t.Fatalf("re-filing staging's proposal on production: %v, want InvalidArgument naming the vault", err)
	}
	p, err := quorum.ParseCanonical(canon)
	if err != nil {
		t.Fatal(err)
	}
	p.Vault = production.vaultID(t)
	canon2, err := p.CanonicalBytes()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := custodyv1.NewGovernanceServiceClient(production.conn(t, "officer-c")).Propose(tctx(t), &custodyv1.ProposeRequest{CanonicalProposal: canon2}); err != nil {
		t.Fatalf("the same change made for production: %v", err)
	}
	if inv := production.ctlAs(t, "officer-c", nil, "proposal", "approve", id, "--officer-key", production.officerKey("carol"), "--yes"); inv.code != 0 {
		t.Fatalf("carol on production: %+v", inv)
	}
	replay := production.ctlAs(t, "officer-c", nil, "proposal", "approve", id, "--officer", "bob", "--signature-file", bobSig, "--yes")
	info := production.proposal(t, id)
	tenantB := false
	for _, g := range production.grantIDs(t) {
		tenantB = tenantB || g == "tenant-b"
	}
	if replay.code == 0 || info.GetState() == custodyv1.ProposalState_PROPOSAL_EXECUTED || !tenantB {
		t.Fatalf("bob's staging approval counted on production: approve exit %d (%s), proposal %v, tenant-b's grant in force %v",
			replay.code, strings.TrimSpace(replay.stderr), info.GetState(), tenantB)
	}
}

// vaultID is the vault's name in proposals, as StatusService tells it.
func (v *redVault) vaultID(t *testing.T) string {
	t.Helper()
	st, err := custodyv1.NewStatusServiceClient(v.conn(t, "officer-c")).GetStatus(tctx(t), &custodyv1.GetStatusRequest{})
	if err != nil || st.GetVaultId() == "" {
		t.Fatalf("vault id: %q %v", st.GetVaultId(), err)
	}
	return st.GetVaultId()
}
