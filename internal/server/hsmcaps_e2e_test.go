package server_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/testenv"
)

func scrape(t *testing.T, e *testenv.Env) string {
	t.Helper()
	resp, err := http.Get("http://" + e.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func capsByName(h *custodyv1.HsmStatus) map[string]*custodyv1.HsmCapability {
	out := map[string]*custodyv1.HsmCapability{}
	for _, c := range h.GetCapabilities() {
		out[c.GetName()] = c
	}
	return out
}

// TestStatusAndMetricsShowWhatTheProbeChose: every role can ask custodyd
// what its HSM does; a caller without a role cannot; /metrics carries the
// same decisions.
func TestStatusAndMetricsShowWhatTheProbeChose(t *testing.T) {
	e := start(t)
	for _, who := range []string{"relay", "operator", "officer", "auditor"} {
		st, err := custodyv1.NewStatusServiceClient(e.Dial(t, who)).GetStatus(ctx(t), &custodyv1.GetStatusRequest{})
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		h := st.GetHsm()
		caps := capsByName(h)
		if h.GetState() != "ready" || h.GetProfile() != "softhsm" || len(caps) != 5 {
			t.Fatalf("%s: status %v", who, h)
		}
		if c := caps["aes_key_wrap_pad"]; !c.GetOk() || !c.GetVerified() || c.GetMechanismCode() != 0x210A {
			t.Errorf("wrap: %v", c)
		}
		if c := caps["rsa_oaep"]; !c.GetOk() || c.GetMode() != "sha1" {
			t.Errorf("oaep: %v", c)
		}
	}
	_, err := custodyv1.NewStatusServiceClient(e.Dial(t, "stranger")).GetStatus(ctx(t), &custodyv1.GetStatusRequest{})
	wantCode(t, err, codes.PermissionDenied, "status for an identity without a role")
	m := scrape(t, e)
	for _, want := range []string{
		`custody_hsm_capability{capability="aes_gcm",mechanism="CKM_AES_GCM",mode="caller_iv",verified="true"} 1`,
		`custody_hsm_capability{capability="aes_key_wrap_pad",mechanism="CKM_AES_KEY_WRAP_PAD",mode="",verified="true"} 1`,
		`custody_hsm_capability{capability="extract_refused",mechanism="",mode="",verified="true"} 1`,
		`custody_hsm_profile_info{profile="softhsm"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestMissingCapabilityIsFailedPreconditionAndEverythingElseServes: with
// GCM and key wrap unavailable (denied by configuration, as on a
// YubiHSM-class token), the calls that need them fail with
// FAILED_PRECONDITION naming the mechanism; signing and MACs keep serving,
// and status and /metrics say what is missing.
func TestMissingCapabilityIsFailedPreconditionAndEverythingElseServes(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{Mutate: func(e *testenv.Env, c *config.Config) {
		testenv.Grant("relay", []string{"enc", "mac", "p256"}, allOps, true)(e, c)
		c.HSM.DenyMechanisms = []string{"0x1087", "0x210A", "0x210B"}
	}})
	e.CreateKey(t, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	e.CreateKey(t, "mac", custodyv1.KeyPurpose_MAC_HMAC_SHA256)
	e.CreateKey(t, "p256", custodyv1.KeyPurpose_SIGN_ECDSA_P256)
	c := e.Crypto(t, "relay")
	_, err := c.Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("x")})
	wantCode(t, err, codes.FailedPrecondition, "encrypt without GCM")
	if !strings.Contains(err.Error(), "CKM_AES_GCM") {
		t.Errorf("encrypt error does not name the mechanism: %v", err)
	}
	// A data key returned in plaintext is sealed with GCM (format 0x03);
	// one that stays wrapped needs RFC 5649 key wrap.
	_, err = c.GenerateDataKey(ctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "enc"})
	wantCode(t, err, codes.FailedPrecondition, "plaintext data key without GCM")
	if !strings.Contains(err.Error(), "CKM_AES_GCM") {
		t.Errorf("plaintext data key error does not name the mechanism: %v", err)
	}
	_, err = c.GenerateDataKey(ctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "enc", WithoutPlaintext: true})
	wantCode(t, err, codes.FailedPrecondition, "wrapped data key without key wrap")
	if !strings.Contains(err.Error(), "RFC 5649") {
		t.Errorf("wrapped data key error does not name the algorithm: %v", err)
	}
	digest := make([]byte, 32)
	if _, err := c.Sign(ctx(t), &custodyv1.SignRequest{KeyName: "p256", Input: &custodyv1.SignRequest_Digest{Digest: digest}}); err != nil {
		t.Errorf("sign: %v", err)
	}
	if _, err := c.Mac(ctx(t), &custodyv1.MacRequest{KeyName: "mac", Data: []byte("x")}); err != nil {
		t.Errorf("mac: %v", err)
	}
	st, err := custodyv1.NewStatusServiceClient(e.Dial(t, "operator")).GetStatus(ctx(t), &custodyv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	caps := capsByName(st.GetHsm())
	if caps["aes_gcm"].GetOk() || caps["aes_key_wrap_pad"].GetOk() || !caps["hmac_sha256"].GetOk() {
		t.Errorf("status: %v", st.GetHsm())
	}
	if m := scrape(t, e); !strings.Contains(m, `custody_hsm_capability{capability="aes_gcm",mechanism="",mode="",verified="false"} 0`) {
		t.Error("/metrics does not show aes_gcm missing")
	}
	if st := e.D.HSM.Stats(); st.DeviceErrors != 0 {
		t.Errorf("refusals counted as device errors: %+v", st)
	}
}

// onNSS points a test custodyd at a fresh NSS softokn database.
func onNSS(t *testing.T) func(*testenv.Env, *config.Config) {
	tok := hsmtest.NewNSS(t)
	pinFile := filepath.Join(t.TempDir(), "nss-pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(_ *testenv.Env, c *config.Config) {
		c.HSM.URI, c.HSM.PINFile, c.HSM.Profile, c.HSM.InitArgs = tok.URI, pinFile, "nss", tok.InitArgs
	}
}

// TestCustodydOnNSSRecordsWhatItCannotVerifyAndRefusesProduction runs
// custodyd on NSS softokn in dev mode: keys work, OAEP uses SHA-256, and
// every key record says what NSS cannot be shown to do (report CKA_LOCAL,
// keep non-extractable keys in). Outside dev mode custodyd refuses to start
// on it.
func TestCustodydOnNSSRecordsWhatItCannotVerifyAndRefusesProduction(t *testing.T) {
	nss := onNSS(t)
	relay, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&relay.PublicKey)
	pin := sha256.Sum256(der)
	e := testenv.Start(t, testenv.Settings{Mutate: func(e *testenv.Env, c *config.Config) {
		nss(e, c)
		testenv.Grant("relay", []string{"enc"}, allOps, true)(e, c)
		c.Grants = append(c.Grants, config.GrantConfig{Identity: "dev-relay", Keys: []string{"transport"},
			Operations: []config.Operation{config.OpDataKey}, RecipientKeys: []string{hex.EncodeToString(pin[:])}})
	}})
	k := e.CreateKey(t, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	got := k.GetVersions()[0].GetAttributes()
	if want := []string{"local", "extractable_enforced"}; !slices.Equal(got.GetUnverified(), want) || got.GetLocal() || !got.GetSensitive() {
		t.Fatalf("key record attributes %v, want unverified %v", got, want)
	}
	again, err := e.Keys(t, "auditor").GetKey(ctx(t), &custodyv1.GetKeyRequest{Name: "enc"})
	if err != nil || !slices.Equal(again.GetVersions()[0].GetAttributes().GetUnverified(), got.GetUnverified()) {
		t.Fatalf("GetKey: %v %v", again, err)
	}
	c := e.Crypto(t, "relay")
	enc, err := c.Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("on nss"), Context: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := c.Decrypt(ctx(t), &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: enc.GetCiphertext(), Context: map[string]string{"a": "b"}})
	if err != nil || string(dec.GetPlaintext()) != "on nss" {
		t.Fatalf("decrypt: %v", err)
	}
	// Key transport to a pinned relay key uses OAEP with SHA-256 here (SoftHSM
	// can only do SHA-1): the module's probe decided, not the relay.
	e.CreateKey(t, "transport", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	dk, err := c.GenerateDataKey(ctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "transport", RecipientPublicKey: der})
	if err != nil {
		t.Fatal(err)
	}
	if dk.GetRecipientWrapping() != "RSA-OAEP-SHA256" {
		t.Fatalf("recipient wrapping %q on NSS, want RSA-OAEP-SHA256", dk.GetRecipientWrapping())
	}
	if key, err := rsa.DecryptOAEP(sha256.New(), nil, relay, dk.GetRecipientWrappedKey(), nil); err != nil || len(key) != 32 {
		t.Fatalf("relay cannot open its copy: %v", err)
	}
	st, err := custodyv1.NewStatusServiceClient(e.Dial(t, "operator")).GetStatus(ctx(t), &custodyv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	caps := capsByName(st.GetHsm())
	if st.GetHsm().GetProfile() != "nss" || caps["rsa_oaep"].GetMode() != "sha256" || caps["aes_key_wrap_pad"].GetMechanismCode() != 0x210B || caps["extract_refused"].GetOk() {
		t.Fatalf("status on nss: %v", st.GetHsm())
	}
	// NSS keeps no data objects: status (and the metric) say that the audit
	// high-water mark is not on the token.
	if m := st.GetAuditMark(); m.GetOnToken() || !strings.Contains(m.GetDetail(), "keeps no data objects: no audit mark on the token") {
		t.Fatalf("audit mark status on nss: %v", m)
	}
	if m := scrape(t, e); !strings.Contains(m, "custody_audit_token_mark 0") {
		t.Error("/metrics does not show the audit mark missing from the token")
	}

	// The same token, outside dev mode: refused at start.
	e.Stop(t)
	prod := *e.Config
	prod.Dev = false
	prod.Listen, prod.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
	d, err := daemon.Start(ctx(t), &prod, daemon.Options{})
	if err == nil {
		d.Shutdown(ctx(t))
		t.Fatal("custodyd started outside dev mode on a token that lets keys out")
	}
	if !strings.Contains(err.Error(), "refusing to hold keys on this token outside dev mode") || !strings.Contains(err.Error(), "CKA_EXTRACTABLE=false") {
		t.Fatalf("refusal does not say why: %v", err)
	}
}

// TestCeremonyTranscriptOnNSSSaysWhatWasNotVerified: keys made at the
// ceremony on a token with unverified properties carry them in the signed
// transcript, its text shows them, and Safe() fails for a token that let
// keys out.
func TestCeremonyTranscriptOnNSSSaysWhatWasNotVerified(t *testing.T) {
	g := startGov(t, onNSS(t))
	tr := g.ceremony(t, 100)
	got, err := quorum.VerifyTranscript(tr.GetJson(), tr.GetSignature(), tr.GetAuditPublicKeyDer())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range got.Keys {
		if !slices.Equal(k.Attributes.Unverified, []string{"local", "extractable_enforced"}) || k.Attributes.Safe() {
			t.Errorf("key %s: attributes %+v", k.Name, k.Attributes)
		}
	}
	if !strings.Contains(tr.GetText(), "UNVERIFIED") {
		t.Errorf("transcript text does not show the unverified attributes:\n%s", tr.GetText())
	}
}
