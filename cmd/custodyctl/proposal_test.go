package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/quorum"
)

// ledgerServer is a GovernanceService over a real quorum.Ledger, enough to
// drive custodyctl's proposal commands over mTLS until custodyd serves
// governance. lie, when set, rewrites what GetProposal returns.
type ledgerServer struct {
	custodyv1.UnimplementedGovernanceServiceServer
	mu        sync.Mutex
	l         *quorum.Ledger
	set       quorum.OfficerSet
	props     map[string]quorum.Proposal
	approvals map[string][]string
	approveN  int
	lie       func(*custodyv1.ProposalInfo)
}

func (s *ledgerServer) info(p quorum.Proposal) *custodyv1.ProposalInfo {
	canon, _ := p.CanonicalBytes()
	d, _ := p.Digest()
	st, _ := s.l.Status(p, time.Now())
	state := map[quorum.State]custodyv1.ProposalState{
		quorum.StatePending: custodyv1.ProposalState_PROPOSAL_PENDING, quorum.StateTimeLocked: custodyv1.ProposalState_PROPOSAL_TIME_LOCKED,
		quorum.StateReady: custodyv1.ProposalState_PROPOSAL_READY, quorum.StateVetoed: custodyv1.ProposalState_PROPOSAL_VETOED,
		quorum.StateExpired: custodyv1.ProposalState_PROPOSAL_EXPIRED, quorum.StateExecuted: custodyv1.ProposalState_PROPOSAL_EXECUTED,
	}[st.State]
	return &custodyv1.ProposalInfo{Id: p.ID, Kind: string(p.Kind), Digest: d.String(), CanonicalProposal: canon, Summary: "server summary",
		State: state, Approvals: s.approvals[p.ID], Threshold: uint32(st.Threshold), Widening: st.Widening,
		Expires: timestamppb.New(p.Expires), Proposer: p.Proposer}
}

func grpcErr(err error) error {
	switch {
	case errors.Is(err, quorum.ErrUnknownProposal):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, quorum.ErrDuplicateApproval), errors.Is(err, quorum.ErrVetoed), errors.Is(err, quorum.ErrExpired):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, quorum.ErrBadSignature), errors.Is(err, quorum.ErrReplay), errors.Is(err, quorum.ErrUnknownOfficer):
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return status.Error(codes.InvalidArgument, err.Error())
}

func (s *ledgerServer) Propose(_ context.Context, r *custodyv1.ProposeRequest) (*custodyv1.ProposalInfo, error) {
	p, err := quorum.ParseCanonical(r.GetCanonicalProposal())
	if err != nil {
		return nil, grpcErr(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.l.Propose(p, quorum.Current{Threshold: s.set.Threshold}, time.Now()); err != nil {
		return nil, grpcErr(err)
	}
	s.props[p.ID] = p
	return s.info(p), nil
}

func (s *ledgerServer) GetProposal(_ context.Context, r *custodyv1.GetProposalRequest) (*custodyv1.ProposalInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.props[r.GetId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such proposal")
	}
	info := s.info(p)
	if s.lie != nil {
		s.lie(info)
	}
	return info, nil
}

func (s *ledgerServer) Approve(_ context.Context, r *custodyv1.ApproveRequest) (*custodyv1.ProposalInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.approveN++
	p, ok := s.props[r.GetId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such proposal")
	}
	if _, err := s.l.Approve(p, r.GetOfficer(), r.GetSignature(), time.Now(), quorum.Current{}); err != nil {
		return nil, grpcErr(err)
	}
	s.approvals[p.ID] = append(s.approvals[p.ID], r.GetOfficer())
	return s.info(p), nil
}

func (s *ledgerServer) Veto(_ context.Context, r *custodyv1.VetoRequest) (*custodyv1.ProposalInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.props[r.GetId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such proposal")
	}
	if err := s.l.Veto(p, r.GetOfficer(), r.GetSignature(), time.Now()); err != nil {
		return nil, grpcErr(err)
	}
	return s.info(p), nil
}

func (s *ledgerServer) ListOfficers(context.Context, *custodyv1.ListOfficersRequest) (*custodyv1.ListOfficersResponse, error) {
	resp := &custodyv1.ListOfficersResponse{Threshold: uint32(s.set.Threshold)}
	for _, o := range s.set.Officers {
		resp.Officers = append(resp.Officers, &custodyv1.Officer{Name: o.Name, Fingerprint: o.Fingerprint(), PublicKeyDer: o.PublicKey})
	}
	return resp, nil
}

// governanceFixture is three officers with key files (M=2) and a ledger
// server behind mTLS.
type governanceFixture struct {
	p    *pki
	addr string
	srv  *ledgerServer
	keys map[string]string // officer name -> key file
}

func newGovernanceFixture(t *testing.T) *governanceFixture {
	t.Helper()
	dir := t.TempDir()
	f := &governanceFixture{p: newPKI(t), keys: map[string]string{}}
	set := quorum.OfficerSet{Threshold: 2}
	for _, n := range []string{"alice", "bob", "carol", "mallory"} {
		kf := filepath.Join(dir, n+".key")
		if inv := keygen(t, "--out", kf); inv.code != exitOK {
			t.Fatal(inv)
		}
		f.keys[n] = kf
		if n == "mallory" {
			continue // a key, but not an officer's
		}
		o, err := readOfficerPublicKey(kf + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		o.Name = n
		set.Officers = append(set.Officers, o)
	}
	l, err := quorum.NewLedger(set, quorum.LedgerOptions{TimeLock: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = &ledgerServer{l: l, set: set, props: map[string]quorum.Proposal{}, approvals: map[string][]string{}}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{f.p.serverCert},
		ClientCAs: f.p.pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13})))
	custodyv1.RegisterGovernanceServiceServer(gs, f.srv)
	custodyv1.RegisterStatusServiceServer(gs, fakeStatus{vault: strings.Repeat("0f", 32)})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	f.addr = lis.Addr().String()
	return f
}

func (f *governanceFixture) cli(t *testing.T, args ...string) invocation {
	t.Helper()
	return runCLI(t, nil, append(append(f.p.flags(f.addr), "--output", "json"), args...)...)
}

func (f *governanceFixture) propose(t *testing.T, args ...string) *custodyv1.ProposalInfo {
	t.Helper()
	inv := f.cli(t, append([]string{"proposal", "create"}, args...)...)
	if inv.code != exitOK {
		t.Fatalf("proposal create: %+v", inv)
	}
	var info struct {
		ID     string `json:"id"`
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal([]byte(inv.stdout), &info); err != nil || info.ID == "" {
		t.Fatalf("proposal create output %q: %v", inv.stdout, err)
	}
	return &custodyv1.ProposalInfo{Id: info.ID, Digest: info.Digest}
}

// assertLastErrorLine checks the exit status and that stderr ends with the
// one error line, after whatever the officer was shown.
func assertLastErrorLine(t *testing.T, inv invocation, code int, grpcCode string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(inv.stderr, "\n"), "\n")
	if inv.code != code || !errorLineIs(lines[len(lines)-1], grpcCode) {
		t.Errorf("exit %d, stderr %q; want exit %d ending in a %s line", inv.code, inv.stderr, code, grpcCode)
	}
}

func TestTwoOfThreeOfficersApproveThroughTheCLI(t *testing.T) {
	f := newGovernanceFixture(t)
	prop := f.propose(t, "rotate-key", "relay-messages")
	p := f.srv.props[prop.Id]
	if d, _ := p.Digest(); d.String() != prop.Digest {
		t.Fatalf("printed digest %s, server holds %s", prop.Digest, d)
	}
	if !strings.HasPrefix(p.Proposer, "spki:") || len(p.Proposer) != 5+64 {
		t.Errorf("proposer %q, want the client certificate's identity (spki: and its key hash)", p.Proposer)
	}

	approve := func(officer string) invocation {
		return f.cli(t, "proposal", "approve", prop.Id, "--officer-key", f.keys[officer], "--yes")
	}
	inv := approve("alice")
	if inv.code != exitOK || !strings.Contains(inv.stdout, `"state":"PROPOSAL_PENDING"`) {
		t.Fatalf("first approval: %+v", inv)
	}
	assertLastErrorLine(t, approve("alice"), exitError, "FailedPrecondition")
	inv = approve("bob")
	if inv.code != exitOK || !strings.Contains(inv.stdout, `"state":"PROPOSAL_READY"`) {
		t.Fatalf("second approval: %+v", inv)
	}
	if got := f.srv.approvals[prop.Id]; strings.Join(got, ",") != "alice,bob" {
		t.Errorf("approvals %v", got)
	}
}

func TestApproveRefusesKeyOfNoOfficerBeforeSigning(t *testing.T) {
	f := newGovernanceFixture(t)
	prop := f.propose(t, "rotate-key", "k")
	inv := f.cli(t, "proposal", "approve", prop.Id, "--officer-key", f.keys["mallory"], "--yes")
	assertLastErrorLine(t, inv, exitError, local)
	// Claiming an officer's name with another key is refused the same way.
	inv = f.cli(t, "proposal", "approve", prop.Id, "--officer-key", f.keys["mallory"], "--officer", "alice", "--yes")
	assertLastErrorLine(t, inv, exitError, local)
	if f.srv.approveN != 0 {
		t.Errorf("%d approvals reached the server", f.srv.approveN)
	}
}

func TestApproveRefusesServerWhoseBytesDoNotMatchItsDigest(t *testing.T) {
	f := newGovernanceFixture(t)
	prop := f.propose(t, "rotate-key", "k")
	other, err := quorum.NewProposal(quorum.RotateKey{Name: "k"}, "operator", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherBytes, _ := other.CanonicalBytes()
	for name, lie := range map[string]func(*custodyv1.ProposalInfo){
		// Shows one proposal, claims the digest of another.
		"digest": func(i *custodyv1.ProposalInfo) { i.Digest = strings.Repeat("0", 64) },
		// Sends another proposal's bytes under the requested id's digest.
		"bytes": func(i *custodyv1.ProposalInfo) { i.CanonicalProposal = otherBytes },
		// Non-canonical bytes (an extra space) for the same proposal.
		"canonical": func(i *custodyv1.ProposalInfo) {
			i.CanonicalProposal = append([]byte(nil), i.CanonicalProposal...)
			i.CanonicalProposal = append(i.CanonicalProposal[:len(i.CanonicalProposal)-1], ' ', '}')
		},
	} {
		t.Run(name, func(t *testing.T) {
			f.srv.mu.Lock()
			f.srv.lie = lie
			f.srv.mu.Unlock()
			inv := f.cli(t, "proposal", "approve", prop.Id, "--officer-key", f.keys["alice"], "--yes")
			assertOneErrorLine(t, inv, exitError, local)
			show := f.cli(t, "proposal", "show", prop.Id)
			assertOneErrorLine(t, show, exitError, local)
		})
	}
	if f.srv.approveN != 0 {
		t.Errorf("%d approvals sent to a lying server", f.srv.approveN)
	}
}

func TestApproveAsksForConfirmationAndSendsNothingWithoutIt(t *testing.T) {
	f := newGovernanceFixture(t)
	prop := f.propose(t, "set-threshold", "1")
	inv := runCLI(t, []byte("n\n"), append(f.p.flags(f.addr), "proposal", "approve", prop.Id, "--officer-key", f.keys["alice"])...)
	lines := strings.Split(strings.TrimSpace(inv.stderr), "\n")
	if inv.code != exitError || !strings.HasSuffix(lines[len(lines)-1], "custodyctl: not confirmed; nothing was signed or sent") {
		t.Fatalf("unconfirmed approve: %+v", inv)
	}
	if !strings.Contains(inv.stderr, "require 1 officer approvals per proposal") {
		t.Errorf("officer was not shown the proposal: %q", inv.stderr)
	}
	if f.srv.approveN != 0 {
		t.Errorf("an unconfirmed approval was sent")
	}
}

func TestVetoThroughTheCLIEndsTheProposal(t *testing.T) {
	f := newGovernanceFixture(t)
	prop := f.propose(t, "add-grant", "relay-messages", "--identity", "spiffe://acme/relay", "--ops", "unwrap", "--allow-plaintext")
	if inv := f.cli(t, "proposal", "veto", prop.Id, "--officer-key", f.keys["carol"], "--yes"); inv.code != exitOK ||
		!strings.Contains(inv.stdout, "PROPOSAL_VETOED") {
		t.Fatalf("veto: %+v", inv)
	}
	assertLastErrorLine(t, f.cli(t, "proposal", "approve", prop.Id, "--officer-key", f.keys["alice"], "--yes"), exitError, "FailedPrecondition")
}

func TestApproveAndVetoReportWhatWasDoneInText(t *testing.T) {
	f := newGovernanceFixture(t)
	text := func(args ...string) invocation {
		return runCLI(t, nil, append(append(f.p.flags(f.addr), "--output", "text"), args...)...)
	}
	prop := f.propose(t, "add-grant", "relay-messages", "--identity", "spiffe://acme/relay", "--ops", "unwrap", "--allow-plaintext")
	if inv := text("proposal", "approve", prop.Id, "--officer-key", f.keys["alice"], "--yes"); inv.code != exitOK ||
		!strings.HasPrefix(inv.stdout, "approved "+prop.Id+" as alice: ") {
		t.Fatalf("approve: %+v", inv)
	}
	if inv := text("proposal", "veto", prop.Id, "--officer-key", f.keys["carol"], "--yes"); inv.code != exitOK ||
		!strings.HasPrefix(inv.stdout, "vetoed "+prop.Id+" as carol: ") {
		t.Fatalf("veto: %+v", inv)
	}
}

func TestOfflineSignatureIsAcceptedWhenSubmitted(t *testing.T) {
	f := newGovernanceFixture(t)
	dir := t.TempDir()
	canon := filepath.Join(dir, "p.bin")
	sigFile := filepath.Join(dir, "p.sig")
	inv := f.cli(t, "proposal", "create", "rotate-key", "k", "--out", canon)
	if inv.code != exitOK {
		t.Fatal(inv)
	}
	var info custodyv1.ProposalInfo
	_ = json.Unmarshal([]byte(inv.stdout), &struct {
		ID *string `json:"id"`
	}{&info.Id})
	if inv := runCLI(t, nil, "proposal", "sign", canon, "--officer-key", f.keys["bob"], "--out", sigFile, "--yes"); inv.code != exitOK ||
		strings.Contains(inv.stderr, "dry run") || !strings.Contains(inv.stderr, "status:     offline") {
		t.Fatalf("offline sign of a submitted proposal must not call it a dry run: %+v", inv)
	}
	inv = f.cli(t, "proposal", "approve", info.Id, "--officer", "bob", "--signature-file", sigFile, "--yes")
	if inv.code != exitOK || f.srv.approvals[info.Id][0] != "bob" {
		t.Fatalf("submitting offline signature: %+v", inv)
	}
	// Bob's signature submitted as carol's is refused before it is sent.
	assertLastErrorLine(t, f.cli(t, "proposal", "approve", info.Id, "--officer", "carol", "--signature-file", sigFile, "--yes"), exitError, local)
}

func TestDryRunSubmitsNothingAndRefusesWildcardOrder(t *testing.T) {
	f := newGovernanceFixture(t)
	inv := f.cli(t, "proposal", "create", "disclosure-order", "relay-messages", "--case", "case-7", "--context", "tenant=acme,user=42",
		"--recipient", "spiffe://acme/le", "--max-uses", "10", "--not-after", "720h", "--dry-run")
	if inv.code != exitOK || len(f.srv.props) != 0 || !strings.Contains(inv.stdout, "tenant=acme,user=42") {
		t.Fatalf("dry run: %+v (server holds %d)", inv, len(f.srv.props))
	}
	inv = f.cli(t, "proposal", "create", "disclosure-order", "relay-messages", "--case", "case-7", "--context", "tenant=*",
		"--recipient", "spiffe://acme/le", "--max-uses", "10", "--not-after", "720h")
	assertOneErrorLine(t, inv, exitError, local)
	if len(f.srv.props) != 0 {
		t.Error("a wildcard disclosure order reached the server")
	}
}

// TestAddGrantThatCouldNeverReturnADataKeyIsRefusedBeforeSending: officers
// are never asked to sign a grant whose data keys no relay could get back.
func TestAddGrantThatCouldNeverReturnADataKeyIsRefusedBeforeSending(t *testing.T) {
	f := newGovernanceFixture(t)
	inv := f.cli(t, "proposal", "create", "add-grant", "relay-messages", "--identity", "spiffe://acme/relay",
		"--ops", "datakey,unwrap", "--context", "tenant=acme")
	if inv.code != exitUsage || !strings.Contains(inv.stderr, "--recipient-key FILE") || !strings.Contains(inv.stderr, "--allow-plaintext") {
		t.Fatalf("unusable add-grant: %+v", inv)
	}
	f.srv.mu.Lock()
	defer f.srv.mu.Unlock()
	if len(f.srv.props) != 0 {
		t.Errorf("the unusable proposal reached the server")
	}
}

// fakeStatus names the fake vault, as custodyd's StatusService does.
type fakeStatus struct {
	custodyv1.UnimplementedStatusServiceServer
	vault string
}

func (f fakeStatus) GetStatus(context.Context, *custodyv1.GetStatusRequest) (*custodyv1.VaultStatus, error) {
	return &custodyv1.VaultStatus{VaultId: f.vault}, nil
}
