package gateway_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/gateway"
	"github.com/custodyhq/custody/internal/testenv"
)

// Keys the relay is granted in these tests, besides testenv's "demo"
// (encrypt, decrypt, datakey, unwrap, rewrap with plaintext).
const (
	signKey  = "gw-sign"
	macKey   = "gw-mac"
	otherKey = "gw-other" // exists, never granted to the relay
)

func startEnv(t *testing.T) *testenv.Env {
	t.Helper()
	e := testenv.Start(t, testenv.Settings{
		Gateway:      true,
		ExtraClients: []string{"stranger"},
		Mutate: testenv.Grant("relay", []string{signKey, macKey},
			[]config.Operation{config.OpSign, config.OpVerify, config.OpPublicKey, config.OpMAC, config.OpVerifyMAC}, false),
	})
	e.CreateKey(t, signKey, custodyv1.KeyPurpose_SIGN_ECDSA_P256)
	e.CreateKey(t, macKey, custodyv1.KeyPurpose_MAC_HMAC_SHA256)
	e.CreateKey(t, otherKey, custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	if e.GatewayAddr == "" {
		t.Fatal("gateway not started")
	}
	return e
}

// answer is a decoded JSON response with its HTTP status.
type answer struct {
	code int
	body map[string]any
	raw  string
}

func (a answer) str(t *testing.T, field string) string {
	t.Helper()
	v, ok := a.body[field].(string)
	if !ok {
		t.Fatalf("response has no string %q: %s", field, a.raw)
	}
	return v
}

func (a answer) bytes(t *testing.T, field string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(a.str(t, field))
	if err != nil {
		t.Fatalf("field %q is not base64: %v", field, err)
	}
	return b
}

// grpcCode is the gRPC status code in an error body.
func (a answer) grpcCode(t *testing.T) codes.Code {
	t.Helper()
	c, ok := a.body["code"].(float64)
	if !ok {
		t.Fatalf("error body has no code: %s", a.raw)
	}
	return codes.Code(c)
}

func do(t *testing.T, c *http.Client, e *testenv.Env, method, path string, body any, header http.Header) answer {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "https://"+e.GatewayAddr+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{code: resp.StatusCode, raw: string(raw)}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Fatalf("%s %s: answer is not JSON (%d): %q", method, path, resp.StatusCode, raw)
	}
	return a
}

func post(t *testing.T, c *http.Client, e *testenv.Env, path string, body any) answer {
	t.Helper()
	return do(t, c, e, http.MethodPost, path, body, nil)
}

func mustOK(t *testing.T, a answer, what string) {
	t.Helper()
	if a.code != http.StatusOK {
		t.Fatalf("%s: HTTP %d: %s", what, a.code, a.raw)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func TestEveryCryptoCallWorksOverRESTWithMTLS(t *testing.T) {
	e := startEnv(t)
	c := e.HTTPClient(t, "relay")
	ctx := map[string]string{"conversation": "c-1"}
	msg := []byte("hello over rest")

	// Encrypt / Decrypt.
	enc := post(t, c, e, "/v1/crypto/encrypt", map[string]any{"key_name": "demo", "plaintext": b64(msg), "context": ctx})
	mustOK(t, enc, "encrypt")
	dec := post(t, c, e, "/v1/crypto/decrypt", map[string]any{"key_name": "demo", "ciphertext": enc.str(t, "ciphertext"), "context": ctx})
	mustOK(t, dec, "decrypt")
	if got := dec.bytes(t, "plaintext"); !bytes.Equal(got, msg) {
		t.Fatalf("decrypt = %q, want %q", got, msg)
	}

	// GenerateDataKey / Unwrap / Rewrap.
	dk := post(t, c, e, "/v1/crypto/generate-data-key", map[string]any{"key_name": "demo", "context": ctx})
	mustOK(t, dk, "generate-data-key")
	plain := dk.bytes(t, "plaintext")
	if len(plain) != 32 {
		t.Fatalf("data key is %d bytes, want 32", len(plain))
	}
	un := post(t, c, e, "/v1/crypto/unwrap", map[string]any{"key_name": "demo", "wrapped_key": dk.str(t, "wrapped_key"), "context": ctx})
	mustOK(t, un, "unwrap")
	if !bytes.Equal(un.bytes(t, "plaintext"), plain) {
		t.Fatal("unwrap returned a different data key")
	}
	rw := post(t, c, e, "/v1/crypto/rewrap", map[string]any{"key_name": "demo", "wrapped_key": dk.str(t, "wrapped_key"), "context": ctx})
	mustOK(t, rw, "rewrap")
	un2 := post(t, c, e, "/v1/crypto/unwrap", map[string]any{"key_name": "demo", "wrapped_key": rw.str(t, "wrapped_key"), "context": ctx})
	mustOK(t, un2, "unwrap rewrapped")
	if !bytes.Equal(un2.bytes(t, "plaintext"), plain) {
		t.Fatal("rewrapped key unwraps to a different data key")
	}

	// Batch forms: one good item and one bad item each.
	be := post(t, c, e, "/v1/crypto/batch-encrypt", map[string]any{"items": []any{
		map[string]any{"key_name": "demo", "plaintext": b64(msg), "context": ctx},
		map[string]any{"key_name": otherKey, "plaintext": b64(msg)},
	}})
	mustOK(t, be, "batch-encrypt")
	results := be.body["results"].([]any)
	if len(results) != 2 {
		t.Fatalf("batch-encrypt results: %s", be.raw)
	}
	first := results[0].(map[string]any)["response"].(map[string]any)
	if e, ok := results[1].(map[string]any)["error"].(map[string]any); !ok || codes.Code(e["code"].(float64)) != codes.PermissionDenied {
		t.Fatalf("batch-encrypt item for an ungranted key: %v", results[1])
	}
	bd := post(t, c, e, "/v1/crypto/batch-decrypt", map[string]any{"items": []any{
		map[string]any{"key_name": "demo", "ciphertext": first["ciphertext"], "context": ctx},
	}})
	mustOK(t, bd, "batch-decrypt")
	got := bd.body["results"].([]any)[0].(map[string]any)["response"].(map[string]any)["plaintext"].(string)
	if got != b64(msg) {
		t.Fatalf("batch-decrypt plaintext = %q", got)
	}
	bu := post(t, c, e, "/v1/crypto/batch-unwrap", map[string]any{"items": []any{
		map[string]any{"key_name": "demo", "wrapped_key": dk.str(t, "wrapped_key"), "context": ctx},
	}})
	mustOK(t, bu, "batch-unwrap")
	if got := bu.body["results"].([]any)[0].(map[string]any)["response"].(map[string]any)["plaintext"].(string); got != b64(plain) {
		t.Fatal("batch-unwrap returned a different data key")
	}

	// Sign / Verify / GetPublicKey, checked with the standard library too.
	sg := post(t, c, e, "/v1/crypto/sign", map[string]any{"key_name": signKey, "message": b64(msg)})
	mustOK(t, sg, "sign")
	sig := sg.bytes(t, "signature")
	vf := post(t, c, e, "/v1/crypto/verify", map[string]any{"key_name": signKey, "message": b64(msg), "signature": b64(sig)})
	mustOK(t, vf, "verify")
	if vf.body["valid"] != true {
		t.Fatalf("verify of a good signature: %s", vf.raw)
	}
	bad := post(t, c, e, "/v1/crypto/verify", map[string]any{"key_name": signKey, "message": b64([]byte("other")), "signature": b64(sig)})
	mustOK(t, bad, "verify wrong message")
	if bad.body["valid"] != false {
		t.Fatalf("verify of a wrong message should be valid=false: %s", bad.raw)
	}
	pk := post(t, c, e, "/v1/crypto/get-public-key", map[string]any{"key_name": signKey})
	mustOK(t, pk, "get-public-key")
	pub, err := x509.ParsePKIXPublicKey(pk.bytes(t, "der"))
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatal("signature from REST does not verify with the public key from REST")
	}
	if pk.body["purpose"] != "SIGN_ECDSA_P256" {
		t.Fatalf("purpose = %v", pk.body["purpose"])
	}

	// Mac / VerifyMac.
	mc := post(t, c, e, "/v1/crypto/mac", map[string]any{"key_name": macKey, "data": b64(msg)})
	mustOK(t, mc, "mac")
	tag := mc.bytes(t, "mac")
	if len(tag) != 32 {
		t.Fatalf("mac is %d bytes", len(tag))
	}
	vm := post(t, c, e, "/v1/crypto/verify-mac", map[string]any{"key_name": macKey, "data": b64(msg), "mac": b64(tag)})
	mustOK(t, vm, "verify-mac")
	if vm.body["valid"] != true {
		t.Fatalf("verify-mac: %s", vm.raw)
	}
	tag[0] ^= 1
	vm = post(t, c, e, "/v1/crypto/verify-mac", map[string]any{"key_name": macKey, "data": b64(msg), "mac": b64(tag)})
	mustOK(t, vm, "verify-mac altered")
	if vm.body["valid"] != false {
		t.Fatalf("verify-mac of an altered tag: %s", vm.raw)
	}
}

func TestKeyMetadataReadsWorkForOperatorAndAreDeniedToRelay(t *testing.T) {
	e := startEnv(t)
	op := e.HTTPClient(t, "operator")
	k := do(t, op, e, http.MethodGet, "/v1/keys/"+signKey, nil, nil)
	mustOK(t, k, "get key")
	if k.body["name"] != signKey || k.body["purpose"] != "SIGN_ECDSA_P256" {
		t.Fatalf("get key: %s", k.raw)
	}
	l := do(t, op, e, http.MethodGet, "/v1/keys?page_size=2", nil, nil)
	mustOK(t, l, "list keys")
	if n := len(l.body["keys"].([]any)); n != 2 || l.body["next_page_token"] == "" {
		t.Fatalf("list keys page of 2: %s", l.raw)
	}
	relay := do(t, e.HTTPClient(t, "relay"), e, http.MethodGet, "/v1/keys", nil, nil)
	if relay.code != http.StatusForbidden || relay.grpcCode(t) != codes.PermissionDenied {
		t.Fatalf("relay listing keys: HTTP %d %s", relay.code, relay.raw)
	}
}

func TestGatewayRefusesClientWithoutCertificate(t *testing.T) {
	e := startEnv(t)
	c := e.HTTPClient(t, "")
	req, _ := http.NewRequest(http.MethodPost, "https://"+e.GatewayAddr+"/v1/crypto/encrypt",
		strings.NewReader(`{"key_name":"demo","plaintext":"aGk="}`))
	resp, err := c.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("request without a client certificate got HTTP %d, want a refused handshake", resp.StatusCode)
	}
	if recs := auditRecords(t, e, "Encrypt"); len(recs) != 0 {
		t.Fatalf("a request without a certificate reached the server: %+v", recs)
	}
}

func TestGatewayDeniesCertificateWithoutRole(t *testing.T) {
	e := startEnv(t)
	a := post(t, e.HTTPClient(t, "stranger"), e, "/v1/crypto/encrypt", map[string]any{"key_name": "demo", "plaintext": b64([]byte("x"))})
	if a.code != http.StatusForbidden || a.grpcCode(t) != codes.PermissionDenied {
		t.Fatalf("stranger: HTTP %d %s", a.code, a.raw)
	}
}

func TestGatewayDeniesUngrantedKey(t *testing.T) {
	e := startEnv(t)
	c := e.HTTPClient(t, "relay")
	for _, path := range []string{"/v1/crypto/encrypt", "/v1/crypto/generate-data-key"} {
		a := post(t, c, e, path, map[string]any{"key_name": otherKey, "plaintext": b64([]byte("x"))})
		if path == "/v1/crypto/generate-data-key" {
			a = post(t, c, e, path, map[string]any{"key_name": otherKey})
		}
		if a.code != http.StatusForbidden || a.grpcCode(t) != codes.PermissionDenied {
			t.Fatalf("%s on an ungranted key: HTTP %d %s", path, a.code, a.raw)
		}
	}
	// A granted key with an operation the grant lacks.
	a := post(t, c, e, "/v1/crypto/sign", map[string]any{"key_name": "demo", "message": b64([]byte("x"))})
	if a.code != http.StatusForbidden {
		t.Fatalf("sign with an encryption-only grant: HTTP %d %s", a.code, a.raw)
	}
}

// TestForgedIdentityHeaderOnGatewayIsIgnored: an HTTP client cannot claim
// another identity with a header; the gateway forwards only the identity of
// its verified certificate.
func TestForgedIdentityHeaderOnGatewayIsIgnored(t *testing.T) {
	e := startEnv(t)
	operatorID := e.Cert["operator"].Identity
	forged := http.Header{
		"Grpc-Metadata-" + http.CanonicalHeaderKey(gateway.IdentityMetadataKey): {operatorID},
		http.CanonicalHeaderKey(gateway.IdentityMetadataKey):                    {operatorID},
	}
	// The operator can list keys, the relay cannot: a forged header that
	// worked would turn this 403 into a 200.
	a := do(t, e.HTTPClient(t, "relay"), e, http.MethodGet, "/v1/keys", nil, forged)
	if a.code != http.StatusForbidden {
		t.Fatalf("relay with a forged operator header: HTTP %d %s", a.code, a.raw)
	}
	// A stranger claiming to be the relay gets nothing either.
	forged = http.Header{"Grpc-Metadata-" + http.CanonicalHeaderKey(gateway.IdentityMetadataKey): {e.Cert["relay"].Identity}}
	a = do(t, e.HTTPClient(t, "stranger"), e, http.MethodPost, "/v1/crypto/encrypt",
		map[string]any{"key_name": "demo", "plaintext": b64([]byte("x"))}, forged)
	if a.code != http.StatusForbidden {
		t.Fatalf("stranger with a forged relay header: HTTP %d %s", a.code, a.raw)
	}
	// And the audit log names the real callers.
	recs := auditRecords(t, e, "ListKeys")
	if len(recs) != 1 || recs[0].Identity != e.Cert["relay"].Identity || recs[0].Outcome != audit.OutcomeDenied {
		t.Fatalf("audit of the forged ListKeys: %+v", recs)
	}
}

// TestForgedIdentityMetadataOnGRPCPortIsRefused: on the public gRPC port the
// forwarded-identity key is refused, whoever sends it.
func TestForgedIdentityMetadataOnGRPCPortIsRefused(t *testing.T) {
	e := startEnv(t)
	for _, client := range []string{"stranger", "relay"} {
		ctx := metadata.AppendToOutgoingContext(context.Background(), gateway.IdentityMetadataKey, e.Cert["relay"].Identity)
		_, err := e.Crypto(t, client).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("x")})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%s with forwarded-identity metadata on the gRPC port: %v, want Unauthenticated", client, err)
		}
	}
	// Without the key the relay's own identity works as usual.
	if _, err := e.Crypto(t, "relay").Encrypt(context.Background(), &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	recs := auditRecords(t, e, "Encrypt")
	if len(recs) != 3 || recs[0].Outcome != audit.OutcomeDenied || recs[1].Outcome != audit.OutcomeDenied || recs[2].Outcome != audit.OutcomeOK {
		t.Fatalf("audit of forged gRPC requests: %+v", recs)
	}
}

func TestBadInputGetsClear400WithStatusBody(t *testing.T) {
	e := startEnv(t)
	c := e.HTTPClient(t, "relay")
	enc := post(t, c, e, "/v1/crypto/encrypt", map[string]any{"key_name": "demo", "plaintext": b64([]byte("secret payload"))})
	mustOK(t, enc, "encrypt")
	ct := enc.bytes(t, "ciphertext")
	ct[len(ct)-1] ^= 1
	cases := []struct {
		name, path string
		body       any
		want       string
	}{
		{"malformed json", "/v1/crypto/encrypt", `{"key_name": "demo",`, "unexpected"},
		{"unknown field", "/v1/crypto/encrypt", `{"key_name": "demo", "plaintxt": "aGk="}`, "plaintxt"},
		{"bytes not base64", "/v1/crypto/encrypt", `{"key_name": "demo", "plaintext": "not base64!"}`, "plaintext"},
		{"missing key name", "/v1/crypto/encrypt", `{"plaintext": "aGk="}`, "key_name"},
		{"tampered ciphertext", "/v1/crypto/decrypt", map[string]any{"key_name": "demo", "ciphertext": b64(ct)}, "did not authenticate"},
		{"sign with both inputs", "/v1/crypto/sign", `{"key_name": "gw-sign", "digest": "aGk=", "message": "aGk="}`, "oneof"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := post(t, c, e, tc.path, tc.body)
			if a.code != http.StatusBadRequest || a.grpcCode(t) != codes.InvalidArgument {
				t.Fatalf("HTTP %d %s, want 400 INVALID_ARGUMENT", a.code, a.raw)
			}
			msg, _ := a.body["message"].(string)
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("message %q does not mention %q", msg, tc.want)
			}
			if strings.Contains(a.raw, "secret payload") || strings.Contains(a.raw, b64([]byte("secret payload"))) {
				t.Fatal("error body carries plaintext")
			}
		})
	}
	// The refused requests encrypted nothing: one Encrypt succeeded, the
	// one made above.
	ok := 0
	for _, r := range auditRecords(t, e, "Encrypt") {
		if r.Outcome == audit.OutcomeOK {
			ok++
		}
	}
	if ok != 1 {
		t.Fatalf("%d successful Encrypt records, want 1", ok)
	}
}

func TestGatewayRequestsAreAuditedWithCallerIdentity(t *testing.T) {
	e := startEnv(t)
	relay := e.Cert["relay"].Identity
	mustOK(t, post(t, e.HTTPClient(t, "relay"), e, "/v1/crypto/mac", map[string]any{"key_name": macKey, "data": b64([]byte("m"))}), "mac")
	a := post(t, e.HTTPClient(t, "relay"), e, "/v1/crypto/mac", map[string]any{"key_name": otherKey, "data": b64([]byte("m"))})
	if a.code != http.StatusForbidden {
		t.Fatalf("mac on ungranted key: %d", a.code)
	}
	recs := auditRecords(t, e, "Mac")
	if len(recs) != 2 {
		t.Fatalf("want 2 Mac records, got %+v", recs)
	}
	if recs[0].Identity != relay || recs[0].Role != "relay" || recs[0].Key != macKey || recs[0].Outcome != audit.OutcomeOK {
		t.Fatalf("allowed gateway request audited as %+v", recs[0])
	}
	if recs[1].Identity != relay || recs[1].Key != otherKey || recs[1].Outcome != audit.OutcomeDenied {
		t.Fatalf("denied gateway request audited as %+v", recs[1])
	}
}

func TestGatewayIsOffUnlessConfigured(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	if e.GatewayAddr != "" || e.D.GatewayAddr() != "" {
		t.Fatalf("gateway listening at %q without gateway_listen", e.GatewayAddr)
	}
}

func auditRecords(t *testing.T, e *testenv.Env, method string) []audit.Record {
	t.Helper()
	var out []audit.Record
	err := e.D.Audit.Read(context.Background(), audit.Filter{Method: method}, func(r audit.Record) error {
		out = append(out, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStoredDataKeysWorkOverREST: a relay not written in Go keeps and
// fetches data keys by id over REST, with the same grant, context check
// and audit as over gRPC.
func TestStoredDataKeysWorkOverREST(t *testing.T) {
	e := startEnv(t)
	c := e.HTTPClient(t, "relay")
	ctx := map[string]string{"tenant": "acme"}
	mustOK(t, post(t, c, e, "/v1/datakeys/store", map[string]any{"key_name": "demo", "id": "conv-1", "context": ctx, "generate": true}), "store")
	first := post(t, c, e, "/v1/datakeys/fetch", map[string]any{"key_name": "demo", "id": "conv-1", "context": ctx})
	mustOK(t, first, "fetch")
	k1 := first.bytes(t, "plaintext")
	again := post(t, c, e, "/v1/datakeys/fetch", map[string]any{"key_name": "demo", "id": "conv-1", "context": ctx})
	mustOK(t, again, "fetch again")
	if k2 := again.bytes(t, "plaintext"); len(k1) != 32 || string(k1) != string(k2) {
		t.Fatalf("fetched %d and %d bytes, equal %v", len(k1), len(k2), string(k1) == string(k2))
	}
	other := post(t, c, e, "/v1/datakeys/fetch", map[string]any{"key_name": "demo", "id": "conv-1", "context": map[string]string{"tenant": "globex"}})
	if other.code != http.StatusNotFound {
		t.Fatalf("another tenant's context: HTTP %d %s (want 404: ids are scoped by context)", other.code, other.raw)
	}
	list := post(t, c, e, "/v1/datakeys/list", map[string]any{"key_name": "demo"})
	mustOK(t, list, "list")
	if !strings.Contains(list.raw, "conv-1") || strings.Contains(list.raw, "plaintext") {
		t.Fatalf("list: %s", list.raw)
	}
	mustOK(t, post(t, c, e, "/v1/datakeys/delete", map[string]any{"key_name": "demo", "id": "conv-1", "context": ctx}), "delete")
	if gone := post(t, c, e, "/v1/datakeys/fetch", map[string]any{"key_name": "demo", "id": "conv-1", "context": ctx}); gone.code != http.StatusNotFound {
		t.Fatalf("after delete: HTTP %d %s", gone.code, gone.raw)
	}
}
