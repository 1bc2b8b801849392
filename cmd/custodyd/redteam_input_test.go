package main

// Red team: content that breaks side paths. A compromised relay sends names
// and ids at their length limits in multi-byte characters, control
// characters and terminal escapes, invalid UTF-8 and malformed protobuf,
// over gRPC and over the REST gateway.

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// wireRequest encodes a request with string field 1 (key name), string
// field 2 (id) or bytes field 2, and one map<string,string> entry in field
// 3, byte for byte as given (invalid UTF-8 included, which a Go client
// would refuse to send).
func wireRequest(name string, field2 []byte, ctxKey, ctxVal string) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, name)
	if field2 != nil {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, field2)
	}
	if ctxKey != "" {
		var e []byte
		e = protowire.AppendTag(e, 1, protowire.BytesType)
		e = protowire.AppendString(e, ctxKey)
		e = protowire.AppendTag(e, 2, protowire.BytesType)
		e = protowire.AppendString(e, ctxVal)
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	return b
}

// TestContentThatBreaksSidePathsIsRefusedAuditedAndChangesNothing: every
// hostile request reaches the server's audit with the relay's identity and
// code InvalidArgument (never Internal, never Unavailable, which clients
// retry), spends no budget and stores nothing; a name or id exactly at its
// limit is served; the log verifies against anchors before and after.
func TestContentThatBreaksSidePathsIsRefusedAuditedAndChangesNothing(t *testing.T) {
	v := newRedVault(t, 3) // budget on msgs: 3 operations
	v.serve(t)
	conn := v.conn(t, "relay")
	cc := custodyv1.NewCryptoServiceClient(conn)
	dk := custodyv1.NewDataKeyServiceClient(conn)
	hc := restClient(t, v.pki.CAFile, v.pki, "relay")
	ct, err := cc.Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
	if err != nil {
		t.Fatal(err)
	}
	raw := func(method string, req []byte) error {
		var out []byte
		return conn.Invoke(tctx(t), method, &req, &out, grpc.ForceCodec(rawCodec{}))
	}
	multi128 := strings.Repeat("é", 64)            // 128 bytes, 64 characters
	multi129 := strings.Repeat("€", 43)            // 129 bytes
	badUTF8 := "tenant-\xff\xfe"                   // not UTF-8
	escape := "a\x1b[8m, PLAINTEXT allowed\x1b[0m" // hides text on a terminal
	cases := []struct {
		name string
		call func() error
	}{
		{"key name at 128 bytes of multi-byte characters", func() error {
			_, err := cc.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: multi128, Ciphertext: ct.GetCiphertext()})
			return err
		}},
		{"key name of 129 bytes", func() error {
			_, err := cc.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: strings.Repeat("k", 129), Ciphertext: ct.GetCiphertext()})
			return err
		}},
		{"key name with a terminal escape", func() error {
			_, err := cc.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: escape, Ciphertext: ct.GetCiphertext()})
			return err
		}},
		{"key name of invalid UTF-8 (raw protobuf)", func() error {
			return raw(custodyv1.CryptoService_Decrypt_FullMethodName, wireRequest("msgs\xff", ct.GetCiphertext(), "", ""))
		}},
		{"context value of invalid UTF-8 (raw protobuf)", func() error {
			return raw(custodyv1.CryptoService_Decrypt_FullMethodName, wireRequest("msgs", ct.GetCiphertext(), "tenant", badUTF8))
		}},
		{"context key over its limit in multi-byte characters", func() error {
			_, err := cc.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: ct.GetCiphertext(),
				Context: map[string]string{multi129: "v"}})
			return err
		}},
		{"malformed protobuf (truncated length)", func() error {
			return raw(custodyv1.CryptoService_Decrypt_FullMethodName, []byte{0x0a, 0x7f, 'm', 's'})
		}},
		{"stored id of 128 bytes of multi-byte characters", func() error {
			_, err := dk.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: "msgs", Id: multi128,
				Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}})
			return err
		}},
		{"stored id of 129 bytes", func() error {
			_, err := dk.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: "msgs", Id: strings.Repeat("i", 129),
				Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}})
			return err
		}},
		{"stored id with a terminal escape", func() error {
			_, err := dk.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: "msgs", Id: escape,
				Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}})
			return err
		}},
		{"stored id of invalid UTF-8 (raw protobuf)", func() error {
			return raw(custodyv1.DataKeyService_StoreDataKey_FullMethodName, wireRequest("msgs", []byte("id-\xc3"), "", ""))
		}},
		{"batch item with a key name of multi-byte characters", func() error {
			r, err := cc.BatchDecrypt(tctx(t), &custodyv1.BatchDecryptRequest{Items: []*custodyv1.DecryptRequest{
				{KeyName: multi128, Ciphertext: ct.GetCiphertext()}}})
			if err != nil {
				return err
			}
			if e := r.GetResults()[0].GetError(); e != nil {
				return status.Error(codes.Code(e.GetCode()), e.GetMessage())
			}
			return nil
		}},
	}
	for _, c := range cases {
		if err := c.call(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", c.name, err)
		}
	}
	// REST: the same content through the gateway reaches the same checks.
	restCases := []struct {
		name string
		path string
		body map[string]any
	}{
		{"REST key name of multi-byte characters", "/v1/crypto/encrypt", map[string]any{"key_name": multi128, "plaintext": "eA=="}},
		{"REST stored id with a terminal escape", "/v1/datakeys/store", map[string]any{"key_name": "msgs", "id": escape, "generate": true}},
		{"REST context key over its limit", "/v1/crypto/encrypt", map[string]any{"key_name": "msgs", "plaintext": "eA==", "context": map[string]string{multi129: "v"}}},
	}
	for _, c := range restCases {
		code, body, err := v.rest(t, hc, c.path, c.body)
		if err != nil || code != http.StatusBadRequest {
			t.Errorf("%s: %d %s %v, want 400", c.name, code, body, err)
		}
	}
	// Bodies the gateway cannot even decode: refused 400 like the rest, and
	// on the record like an undecodable gRPC request.
	undecodable := []string{`{`, `{"key_name":"msgs","plaintext":"eA==","bogus":1}`, `{"key_name":"msgs","plaintext":"not base64!"}`,
		`{"key_name":"msgs","plaintext":"eA==","context":{"t":"\udcff"}}`}
	for _, body := range undecodable {
		resp, err := hc.Post("https://"+v.gwAddr+"/v1/crypto/encrypt", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("REST body %s: HTTP %d, want 400", body, resp.StatusCode)
		}
	}
	// Exactly at the limits, in ASCII: served.
	if _, err := dk.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: "msgs", Id: strings.Repeat("i", 128),
		Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}}); err != nil {
		t.Fatalf("a 128-byte id: %v", err)
	}
	// The budget of 3 pays for the encrypt, this store and one decrypt, so
	// no refused request spent any of it.
	if _, err := cc.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: ct.GetCiphertext()}); err != nil {
		t.Fatalf("the third unit of budget: %v (refused input spent budget)", err)
	}
	_, err = cc.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: ct.GetCiphertext()})
	wantCode(t, err, codes.ResourceExhausted, "a fourth operation on a budget of 3")
	ids, err := custodyv1.NewDataKeyServiceClient(v.conn(t, "operator")).ListDataKeyIds(tctx(t), &custodyv1.ListDataKeyIdsRequest{KeyName: "msgs"})
	if err != nil || len(ids.GetIds()) != 1 || ids.GetIds()[0] != strings.Repeat("i", 128) {
		t.Fatalf("stored ids after the attack: %v %v", ids.GetIds(), err)
	}

	// Every hostile request is on the record under the relay's identity
	// with code InvalidArgument (batch: the item).
	v.evidence(t)
	var invalid int
	for _, r := range auditRecords(t, filepath.Join(v.data, "audit")) {
		if r["identity"] == v.identity["relay"] && r["code"] == "InvalidArgument" {
			invalid++
		}
		for _, f := range []string{"key", "detail", "method"} {
			if s, _ := r[f].(string); strings.Contains(s, "\x1b") {
				t.Errorf("audit record field %s holds a raw terminal escape: %q", f, s)
			}
		}
	}
	if want := len(cases) + len(restCases) + len(undecodable); invalid != want {
		t.Errorf("%d InvalidArgument records of the relay, want %d", invalid, want)
	}
}
