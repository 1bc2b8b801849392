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
