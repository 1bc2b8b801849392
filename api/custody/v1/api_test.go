package custodyv1_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// roundTrip marshals m, unmarshals into a fresh message of the same type and
// fails unless the two are equal.
func roundTrip(t *testing.T, m proto.Message) {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("marshal %T: %v", m, err)
	}
	got := m.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatalf("unmarshal %T: %v", m, err)
	}
	if !proto.Equal(m, got) {
		t.Fatalf("%T changed in round trip:\n sent %v\n  got %v", m, m, got)
	}
}

func TestKeyServiceMessagesSurviveWireRoundTrip(t *testing.T) {
	created := timestamppb.New(time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC))
	roundTrip(t, &custodyv1.Key{
		Name:                 "relay-messages",
		Purpose:              custodyv1.KeyPurpose_ENCRYPT_AES256_GCM,
		Description:          "per-message data keys",
		PrimaryVersion:       2,
		MinDecryptionVersion: 1,
		CreateTime:           created,
		Versions: []*custodyv1.KeyVersion{
			{Version: 1, State: custodyv1.KeyVersionState_DESTROY_SCHEDULED, CreateTime: created,
				DestroyTime: timestamppb.New(created.AsTime().Add(24 * time.Hour)), HsmKeyId: "0a1b2c",
				Attributes: &custodyv1.HsmAttributes{NeverExtractable: true, AlwaysSensitive: true, Local: true, Sensitive: true}},
			{Version: 2, State: custodyv1.KeyVersionState_ENABLED, CreateTime: created, HsmKeyId: "ffee"},
		},
	})
	roundTrip(t, &custodyv1.ScheduleKeyDestructionRequest{Name: "k", Version: 3, WaitingPeriod: durationpb.New(168 * time.Hour)})
}

func TestCryptoServiceMessagesSurviveWireRoundTrip(t *testing.T) {
	roundTrip(t, &custodyv1.GenerateDataKeyRequest{
		KeyName:            "relay-messages",
		Context:            map[string]string{"conversation": "c-42", "tenant": "acme"},
		WithoutPlaintext:   true,
		RecipientPublicKey: []byte{0x30, 0x82, 0x01, 0x22},
	})
	roundTrip(t, &custodyv1.SignRequest{KeyName: "signer", Input: &custodyv1.SignRequest_Message{Message: []byte("hello")}})
	roundTrip(t, &custodyv1.BatchDecryptResponse{Results: []*custodyv1.BatchDecryptResult{
		{Result: &custodyv1.BatchDecryptResult_Response{Response: &custodyv1.DecryptResponse{Plaintext: []byte("pt"), KeyVersion: 4}}},
		{Result: &custodyv1.BatchDecryptResult_Error{Error: &custodyv1.ItemError{Code: 3, Message: "bad ciphertext"}}},
	}})
}

func TestSignRequestEmptyDigestIsDistinctFromUnset(t *testing.T) {
	// The oneof lets the server tell "digest of zero bytes" from "no digest".
	set := &custodyv1.SignRequest{KeyName: "k", Input: &custodyv1.SignRequest_Digest{Digest: []byte{}}}
	b, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	var got custodyv1.SignRequest
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if _, ok := got.GetInput().(*custodyv1.SignRequest_Digest); !ok {
		t.Fatalf("empty digest lost in round trip: input = %T", got.GetInput())
	}
}

// rpc is a method's name with its request and response message names.
type rpc struct{ name, in, out string }

func methodsOf(t *testing.T, service protoreflect.FullName) []rpc {
	t.Helper()
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(service)
	if err != nil {
		t.Fatalf("service %s not registered: %v", service, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		t.Fatalf("%s is a %T, not a service", service, d)
	}
	var out []rpc
	ms := sd.Methods()
	for i := 0; i < ms.Len(); i++ {
		m := ms.Get(i)
		if m.IsStreamingClient() || m.IsStreamingServer() {
			t.Errorf("%s is streaming; every Custody RPC is unary", m.FullName())
		}
		out = append(out, rpc{string(m.Name()), string(m.Input().Name()), string(m.Output().Name())})
	}
	return out
}

func assertMethods(t *testing.T, service protoreflect.FullName, want []rpc) {
	t.Helper()
	got := methodsOf(t, service)
	if len(got) != len(want) {
		t.Errorf("%s has %d RPCs, want %d: %v", service, len(got), len(want), got)
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Errorf("%s RPC %d = %v, want %v", service, i, got[i], want[i])
		}
	}
}

func TestKeyServiceListsExactlyTheAgreedRPCs(t *testing.T) {
	assertMethods(t, "custody.v1.KeyService", []rpc{
		{"CreateKey", "CreateKeyRequest", "Key"},
		{"GetKey", "GetKeyRequest", "Key"},
		{"ListKeys", "ListKeysRequest", "ListKeysResponse"},
		{"RotateKey", "RotateKeyRequest", "Key"},
		{"EnableKeyVersion", "KeyVersionRequest", "Key"},
		{"DisableKeyVersion", "KeyVersionRequest", "Key"},
		{"SetMinDecryptionVersion", "SetMinDecryptionVersionRequest", "Key"},
		{"ScheduleKeyDestruction", "ScheduleKeyDestructionRequest", "Key"},
		{"CancelKeyDestruction", "KeyVersionRequest", "Key"},
	})
	if n := len(custodyv1.KeyService_ServiceDesc.Methods); n != 9 {
		t.Errorf("grpc KeyService_ServiceDesc has %d methods, want 9", n)
	}
}

func TestCryptoServiceListsExactlyTheAgreedRPCs(t *testing.T) {
	assertMethods(t, "custody.v1.CryptoService", []rpc{
		{"Encrypt", "EncryptRequest", "EncryptResponse"},
		{"Decrypt", "DecryptRequest", "DecryptResponse"},
		{"GenerateDataKey", "GenerateDataKeyRequest", "GenerateDataKeyResponse"},
		{"Unwrap", "UnwrapRequest", "UnwrapResponse"},
		{"Rewrap", "RewrapRequest", "RewrapResponse"},
		{"Sign", "SignRequest", "SignResponse"},
		{"Verify", "VerifyRequest", "VerifyResponse"},
		{"GetPublicKey", "GetPublicKeyRequest", "GetPublicKeyResponse"},
		{"Mac", "MacRequest", "MacResponse"},
		{"VerifyMac", "VerifyMacRequest", "VerifyMacResponse"},
		{"BatchEncrypt", "BatchEncryptRequest", "BatchEncryptResponse"},
		{"BatchDecrypt", "BatchDecryptRequest", "BatchDecryptResponse"},
		{"BatchUnwrap", "BatchUnwrapRequest", "BatchUnwrapResponse"},
	})
	if n := len(custodyv1.CryptoService_ServiceDesc.Methods); n != 13 {
		t.Errorf("grpc CryptoService_ServiceDesc has %d methods, want 13", n)
	}
}

func TestGovernanceServiceListsExactlyTheAgreedRPCs(t *testing.T) {
	assertMethods(t, "custody.v1.GovernanceService", []rpc{
		{"InitCeremony", "InitCeremonyRequest", "CeremonyTranscript"},
		{"GetCeremonyTranscript", "GetCeremonyTranscriptRequest", "CeremonyTranscript"},
		{"Propose", "ProposeRequest", "ProposalInfo"},
		{"GetProposal", "GetProposalRequest", "ProposalInfo"},
		{"ListProposals", "ListProposalsRequest", "ListProposalsResponse"},
		{"Approve", "ApproveRequest", "ProposalInfo"},
		{"Veto", "VetoRequest", "ProposalInfo"},
		{"ListOfficers", "ListOfficersRequest", "ListOfficersResponse"},
		{"ListGrants", "ListGrantsRequest", "ListGrantsResponse"},
		{"ListBudgets", "ListBudgetsRequest", "ListBudgetsResponse"},
		{"ListDisclosureOrders", "ListDisclosureOrdersRequest", "ListDisclosureOrdersResponse"},
	})
	if n := len(custodyv1.GovernanceService_ServiceDesc.Methods); n != 11 {
		t.Errorf("grpc GovernanceService_ServiceDesc has %d methods, want 11", n)
	}
}

func TestGovernanceMessagesSurviveWireRoundTrip(t *testing.T) {
	at := timestamppb.New(time.Date(2025, 6, 1, 9, 0, 0, 0, time.UTC))
	grant := &custodyv1.Grant{Id: "g-1", Identity: "spiffe://acme/relay", Key: "relay-messages",
		Operations: []string{"unwrap", "datakey"}, ContextMatch: map[string]string{"tenant": "acme"},
		RecipientKeySha256: [][]byte{make([]byte, 32)}, AllowPlaintext: true}
	budget := &custodyv1.Budget{Identity: "spiffe://acme/relay", Key: "relay-messages", Rate: 0.5, Burst: 20,
		Volume: 10000, Window: durationpb.New(24 * time.Hour), Frozen: true}
	roundTrip(t, &custodyv1.InitCeremonyRequest{
		Officers:  []*custodyv1.Officer{{Name: "alice", PublicKeyDer: []byte{0x30, 0x2a}}, {Name: "bob", PublicKeyDer: []byte{0x30, 0x59}}},
		Threshold: 2,
		Keys:      []*custodyv1.CeremonyKey{{Name: "relay-messages", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM, Description: "d"}},
		Grants:    []*custodyv1.Grant{grant},
		Budgets:   []*custodyv1.Budget{budget},
	})
	roundTrip(t, &custodyv1.CeremonyTranscript{Json: []byte(`{"threshold":2}`), Text: "t", Signature: []byte{1, 2}, AuditPublicKeyDer: []byte{3}})
	roundTrip(t, &custodyv1.ProposalInfo{
		Id: "p-0011223344556677", Kind: "add-grant", Digest: "ab", CanonicalProposal: []byte("custody-proposal-v1\n{}"),
		Summary: "grant", State: custodyv1.ProposalState_PROPOSAL_TIME_LOCKED, Approvals: []string{"alice", "bob"},
		Threshold: 2, Widening: true, TimeLockUntil: at, Expires: at, ExecutedTime: at, Result: "ok",
		Proposer: "op", CreateTime: at, VetoedBy: "carol",
	})
	roundTrip(t, &custodyv1.DisclosureOrder{CaseRef: "case-7", Key: "k", ContextMatch: map[string]string{"user": "42"},
		Recipient: "spiffe://acme/le", MaxUses: 10, NotAfter: at, Used: 3})
	roundTrip(t, &custodyv1.ListBudgetsResponse{Budgets: []*custodyv1.Budget{budget}})
}

func TestProposalStateFilterDefaultsToAll(t *testing.T) {
	// An unset filter must decode as "every state", never as a real state.
	var req custodyv1.ListProposalsRequest
	if err := proto.Unmarshal(nil, &req); err != nil {
		t.Fatal(err)
	}
	if req.GetState() != custodyv1.ProposalState_PROPOSAL_STATE_UNSPECIFIED {
		t.Fatalf("unset state filter decodes as %v", req.GetState())
	}
	for v, name := range custodyv1.ProposalState_name {
		if v != 0 && name == "PROPOSAL_STATE_UNSPECIFIED" {
			t.Fatalf("state %d is also called unspecified", v)
		}
	}
}

func TestAuditServiceListsExactlyTheAgreedRPCs(t *testing.T) {
	// Tail is the one server-streaming RPC in custody.v1 (tail -f), so this
	// test reads the descriptor itself instead of using methodsOf.
	d, err := protoregistry.GlobalFiles.FindDescriptorByName("custody.v1.AuditService")
	if err != nil {
		t.Fatalf("AuditService not registered: %v", err)
	}
	ms := d.(protoreflect.ServiceDescriptor).Methods()
	want := []struct {
		rpc
		serverStream bool
	}{
		{rpc{"Tail", "TailRequest", "AuditRecord"}, true},
		{rpc{"GetLatestCheckpoint", "GetLatestCheckpointRequest", "AuditCheckpoint"}, false},
		{rpc{"GetAuditPublicKey", "GetAuditPublicKeyRequest", "AuditPublicKey"}, false},
		{rpc{"Report", "ReportRequest", "TransparencyReport"}, false},
		{rpc{"DigestContext", "DigestContextRequest", "DigestContextResponse"}, false},
	}
	if ms.Len() != len(want) {
		t.Errorf("AuditService has %d RPCs, want %d", ms.Len(), len(want))
	}
	for i := range min(ms.Len(), len(want)) {
		m := ms.Get(i)
		got := rpc{string(m.Name()), string(m.Input().Name()), string(m.Output().Name())}
		if got != want[i].rpc || m.IsStreamingServer() != want[i].serverStream || m.IsStreamingClient() {
			t.Errorf("AuditService RPC %d = %v (server stream %v, client stream %v), want %v (server stream %v)",
				i, got, m.IsStreamingServer(), m.IsStreamingClient(), want[i].rpc, want[i].serverStream)
		}
	}
	if n := len(custodyv1.AuditService_ServiceDesc.Methods); n != 4 {
		t.Errorf("grpc AuditService_ServiceDesc has %d unary methods, want 4", n)
	}
	if n := len(custodyv1.AuditService_ServiceDesc.Streams); n != 1 {
		t.Errorf("grpc AuditService_ServiceDesc has %d streams, want 1", n)
	}
}

func TestAuditRecordSurvivesWireRoundTripWithEveryField(t *testing.T) {
	at := timestamppb.New(time.Date(2025, 6, 1, 9, 0, 0, 123456789, time.UTC))
	rec := &custodyv1.AuditRecord{
		Format: 2, Seq: 42, Time: at, Identity: "spiffe://acme/relay", Role: "relay", Method: "Decrypt",
		Key: "relay-messages", KeyVersion: 3, ContextDigest: make([]byte, 32), Outcome: "denied",
		Code: "PermissionDenied", CaseRef: "case-7", Detail: "no grant", PrevHash: []byte{1, 2}, Hash: []byte{3, 4},
		Replica: "custody-1",
	}
	roundTrip(t, rec)
	// Every field of the message is set above: a field added to the proto
	// without being carried here (and in the server's conversion) fails.
	fields := rec.ProtoReflect().Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		if !rec.ProtoReflect().Has(fields.Get(i)) {
			t.Errorf("AuditRecord field %s is not exercised", fields.Get(i).Name())
		}
	}
	roundTrip(t, &custodyv1.TailRequest{Identity: "i", Key: "k", Method: "Decrypt", Since: at, Until: at,
		AfterSeq: 9, Follow: true, Limit: 100})
	roundTrip(t, &custodyv1.AuditCheckpoint{Seq: 7, HeadHash: []byte{9}, Time: at, Instance: "vault-1",
		Signature: []byte{0x30}, Json: []byte(`{"seq":7}`)})
	roundTrip(t, &custodyv1.AuditPublicKey{Der: []byte{0x30}, Pem: "-----BEGIN PUBLIC KEY-----", Sha256: make([]byte, 32)})
	roundTrip(t, &custodyv1.ReportRequest{Since: at, Until: at, Methods: []string{"Decrypt"}})
	roundTrip(t, &custodyv1.TransparencyReport{Json: []byte(`{}`), Signature: []byte{1}})
}
