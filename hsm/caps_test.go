package hsm_test

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// wantCaps is what the probe must decide on each token.
type wantCaps struct {
	gcmMode  string
	wrapMech uint
	wrapNote string // in the wrap detail: what the other number is here
	oaep     crypto.Hash
	hmacMode string
	extract  bool
}

var probeDecisions = map[hsmtest.Kind]wantCaps{
	// SoftHSM 2.6.1: RFC 5649 is 0x210A and 0x210B is not listed; OAEP
	// only with SHA-1.
	hsmtest.SoftHSM: {gcmMode: "caller_iv", wrapMech: 0x210A, wrapNote: "CKM_AES_KEY_WRAP_PAD (0x210A): RFC 5649, verified",
		oaep: crypto.SHA1, hmacMode: "generic_secret", extract: true},
	// NSS softokn 3.87: RFC 5649 is 0x210B; 0x210A is PKCS#7 padding +
	// RFC 3394. OAEP with SHA-256. Extraction not enforced.
	hsmtest.NSS: {gcmMode: "caller_iv", wrapMech: 0x210B, wrapNote: "CKM_AES_KEY_WRAP_PAD (0x210A): output is not RFC 5649",
		oaep: crypto.SHA256, hmacMode: "generic_secret", extract: false},
}

// TestProbeDecidesEachCapabilityOnEachToken: the start-up probe, comparing
// the token's output with Go, picks the right mechanism and parameter form
// on both tokens, where they differ.
func TestProbeDecidesEachCapabilityOnEachToken(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		want := probeDecisions[tok.Kind]
		c := m.Capabilities()
		if c.Profile != tok.Profile {
			t.Errorf("profile %q, want %q", c.Profile, tok.Profile)
		}
		check := func(cp hsm.Capability, mech uint, mode string) {
			t.Helper()
			if !cp.OK || !cp.Verified || cp.Mechanism.Code != mech || cp.Mode != mode {
				t.Errorf("%s: %+v, want mechanism 0x%X mode %q, verified", cp.Name, cp, mech, mode)
			}
		}
		check(c.GCM, pkcs11.CKM_AES_GCM, want.gcmMode)
		check(c.Wrap, want.wrapMech, "")
		check(c.OAEP, pkcs11.CKM_RSA_PKCS_OAEP, map[crypto.Hash]string{crypto.SHA1: "sha1", crypto.SHA256: "sha256"}[want.oaep])
		check(c.HMAC, pkcs11.CKM_SHA256_HMAC, want.hmacMode)
		if !strings.Contains(c.Wrap.Detail, want.wrapNote) {
			t.Errorf("wrap detail %q does not say %q", c.Wrap.Detail, want.wrapNote)
		}
		if c.OAEPHash() != want.oaep {
			t.Errorf("OAEP hash %v, want %v", c.OAEPHash(), want.oaep)
		}
		if c.Extract.OK != want.extract {
			t.Errorf("extraction refused = %v (%s), want %v", c.Extract.OK, c.Extract.Detail, want.extract)
		}
		// And what the probe chose works: data keys wrap with RFC 5649 (a
		// readable data key, wrapped, must equal Go's RFC 5649 of it under a
		// readable master... masters are not readable, so check the length
		// and the round trip).
		ctx := ctxT(t)
		master, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
		if err != nil {
			t.Fatal(err)
		}
		w, dk, err := m.GenerateDataKey(ctx, master, true)
		if err != nil || len(w) != 40 {
			t.Fatalf("data key: %d bytes wrapped, %v", len(w), err)
		}
		if got, err := m.UnwrapDataKey(ctx, master, w); err != nil || !bytes.Equal(got, dk) {
			t.Fatalf("unwrap: %v", err)
		}
	})
}

// TestProbeOnATokenThatRefusesReadableKeys: NSS in FIPS mode refuses keys
// whose value could be read, so the probe cannot compare with Go. It must
// still find GCM and HMAC by round trips (reported unverified), take the
// RFC 5649 mechanism the profile declares (reported unverified, and only
// after a round trip), and say why.
func TestProbeOnATokenThatRefusesReadableKeys(t *testing.T) {
	tok := hsmtest.NewNSSFIPS(t)
	m := tok.Open(t)
	c := m.Capabilities()
	if !c.GCM.OK || c.GCM.Verified || !strings.Contains(c.GCM.Detail, "refused a readable scratch key") {
		t.Errorf("gcm: %+v", c.GCM)
	}
	if !c.Wrap.OK || c.Wrap.Verified || c.Wrap.Mechanism.Code != 0x210B || !strings.Contains(c.Wrap.Detail, "declared RFC 5649 by the nss profile") {
		t.Errorf("wrap: %+v", c.Wrap)
	}
	if !c.HMAC.OK || c.HMAC.Verified {
		t.Errorf("hmac: %+v", c.HMAC)
	}
	// The generic profile declares nothing: on the same token, key wrap is
	// then missing (not guessed), and only the features that need it stop.
	m.Close()
	cfg := tok.Config()
	cfg.Profile = "generic"
	g, err := hsm.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	gc := g.Capabilities()
	if gc.Wrap.OK || !strings.Contains(gc.Wrap.Detail, "not verifiable") {
		t.Errorf("generic profile wrap: %+v", gc.Wrap)
	}
	if !gc.GCM.OK {
		t.Errorf("generic profile gcm: %+v", gc.GCM)
	}
	// Nor does it waive CKA_LOCAL, which softokn reports false: keys are
	// refused rather than recorded as in custody.
	if _, _, err := g.CreateKey(ctxT(t), hsm.KindAES256, "master"); !errors.Is(err, hsm.ErrKeyPolicy) || !strings.Contains(err.Error(), "local") {
		t.Fatalf("key on NSS with the generic profile: %v, want ErrKeyPolicy naming local", err)
	}
}

// TestMissingCapabilityDisablesOnlyItsFeatures: a token without GCM, key
// wrap and OAEP (a YubiHSM-class token; here the mechanisms are denied by
// configuration) refuses exactly the operations that need them, naming the
// mechanism, and keeps signing, MACing and answering random.
func TestMissingCapabilityDisablesOnlyItsFeatures(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		cfg := tok.Config()
		cfg.DenyMechanisms = []uint{pkcs11.CKM_AES_GCM, pkcs11.CKM_AES_KEY_WRAP_PAD, 0x210B, pkcs11.CKM_RSA_PKCS_OAEP}
		m, err := hsm.Open(ctxT(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ctx := ctxT(t)
		master, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
		if err != nil {
			t.Fatal(err)
		}
		for name, c := range map[string]struct {
			err  error
			says string
		}{
			"encrypt":  {func() error { _, _, err := m.Encrypt(ctx, master, []byte("x"), nil); return err }(), "CKM_AES_GCM"},
			"decrypt":  {func() error { _, err := m.Decrypt(ctx, master, make([]byte, 12), make([]byte, 16), nil); return err }(), "CKM_AES_GCM"},
			"data key": {func() error { _, _, err := m.GenerateDataKey(ctx, master, true); return err }(), "RFC 5649"},
			"unwrap":   {func() error { _, err := m.UnwrapDataKey(ctx, master, make([]byte, 40)); return err }(), "RFC 5649"},
		} {
			if !errors.Is(c.err, hsm.ErrUnsupported) || !strings.Contains(c.err.Error(), c.says) {
				t.Errorf("%s: %v, want ErrUnsupported naming %s", name, c.err, c.says)
			}
		}
		sk, _, err := m.CreateKey(ctx, hsm.KindECDSAP256, "signer")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Sign(ctx, sk, make([]byte, 32)); err != nil {
			t.Errorf("sign: %v", err)
		}
		mk, _, err := m.CreateKey(ctx, hsm.KindHMACSHA256, "mac")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.MAC(ctx, mk, []byte("x")); err != nil {
			t.Errorf("mac: %v", err)
		}
		if _, err := m.Random(ctx, 16); err != nil {
			t.Errorf("random: %v", err)
		}
		if st := m.Stats(); st.DeviceErrors != 0 || st.State != hsm.StateReady {
			t.Errorf("stats: %+v", st)
		}
	})
}

// TestRFC5649MatchesPublishedVectors checks the probe's Go reference
// against RFC 5649 section 6.
func TestRFC5649MatchesPublishedVectors(t *testing.T) {
	kek, _ := hex.DecodeString("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	for _, c := range []struct{ key, want string }{
		{"c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
		{"466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
	} {
		key, _ := hex.DecodeString(c.key)
		got, err := hsm.RFC5649Wrap(kek, key)
		if err != nil || hex.EncodeToString(got) != c.want {
			t.Errorf("wrap %s = %x, %v; want %s", c.key, got, err, c.want)
		}
	}
}

// TestFunctionListLayoutMatchesExportedSymbols: the pre-sized calls reach
// C_Encrypt, C_Decrypt and C_WrapKey through the module's function list;
// SoftHSM also exports every function by name, so each entry can be checked.
func TestFunctionListLayoutMatchesExportedSymbols(t *testing.T) {
	m, _ := hsmtest.Open(t)
	if bad := hsm.FunctionListMatchesSymbols(m); len(bad) > 0 {
		t.Fatalf("function list entries differ from the exported symbols: %v", bad)
	}
}

// TestGCMIVDecisionForVendorBehaviours: how the probe reads one encryption,
// for behaviours documented by vendors that cannot run here (their sources
// are in docs/hsm-compatibility.md). The token paths for SoftHSM and NSS run
// in TestProbeDecidesEachCapabilityOnEachToken.
func TestGCMIVDecisionForVendorBehaviours(t *testing.T) {
	sent := []byte("0123456789ab")
	zero := make([]byte, 12)
	theirs := []byte("HSM-drawn-iv")
	const pt = 32
	for _, c := range []struct {
		name     string
		sent     []byte
		ctLen    int
		back     []byte
		err      error
		want     int
		wantIV   []byte
		wantSays string
	}{
		{"SoftHSM and NSS use the caller's IV", sent, pt + 16, sent, nil, hsm.GCMCallerIV, sent, ""},
		{"CloudHSM overwrites the IV buffer with its own", sent, pt + 16, theirs, nil, hsm.GCMTokenIV, theirs, ""},
		{"a token that refuses caller IVs: try a buffer it fills", sent, 0, nil, pkcs11.Error(pkcs11.CKR_MECHANISM_PARAM_INVALID), hsm.GCMRetryTokenIV, nil, "CKR_MECHANISM_PARAM_INVALID"},
		{"then it fills the zeroed buffer", zero, pt + 16, theirs, nil, hsm.GCMTokenIV, theirs, ""},
		{"then it leaves the buffer zero: a zero caller IV, which probeGCM refuses on the retry", zero, pt + 16, zero, nil, hsm.GCMCallerIV, zero, ""},
		{"Luna in FIPS mode appends a 16-byte IV to the ciphertext", sent, pt + 16 + 16, sent, nil, hsm.GCMRefused, nil, "appends an IV of 16 bytes"},
		{"a token that draws 16-byte IVs", sent, pt + 16, []byte("sixteen-byte-iv!"), nil, hsm.GCMRefused, nil, "16-byte IVs"},
	} {
		got, iv, why := hsm.DecideGCM(pt, c.sent, make([]byte, c.ctLen), c.back, c.err)
		if got != c.want || !bytes.Equal(iv, c.wantIV) || !strings.Contains(why, c.wantSays) {
			t.Errorf("%s: decision %d iv %q (%s), want %d iv %q mentioning %q", c.name, got, iv, why, c.want, c.wantIV, c.wantSays)
		}
	}
}

// TestProfileCapsSessionsAndOmissionNeverWeakensTheReadBack: a profile's
// session cap bounds the pool below what the token reports, and attributes
// a profile leaves out of templates are still checked on read-back. With
// the yubihsm profile on SoftHSM (its test PIN happens to have the YubiHSM
// form), CKA_SENSITIVE is left out of HMAC templates, SoftHSM's default is
// not sensitive, and the key is refused and removed rather than recorded.
func TestProfileCapsSessionsAndOmissionNeverWeakensTheReadBack(t *testing.T) {
	tok := hsmtest.New(t)
	cfg := tok.Config()
	cfg.Profile, cfg.MaxSessions = "yubihsm", 64
	m, err := hsm.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if st := m.Stats(); st.SessionsMax != 15 { // 16, one kept pinned
		t.Fatalf("sessions max %d under the yubihsm profile, want 15", st.SessionsMax)
	}
	ctx := ctxT(t)
	_, _, err = m.CreateKey(ctx, hsm.KindHMACSHA256, "mac")
	if !errors.Is(err, hsm.ErrKeyPolicy) || !strings.Contains(err.Error(), "sensitive") {
		t.Fatalf("HMAC key with CKA_SENSITIVE omitted on SoftHSM: %v, want ErrKeyPolicy naming sensitive", err)
	}
	if n, err := m.Index(ctx); err != nil || n != 0 {
		t.Fatalf("%d objects left after the refused key: %v", n, err)
	}
	m.Close()

	// The luna profile bounds one GCM input at 64 KiB; its vendor wrap
	// number is not on SoftHSM, so the probe falls through to 0x210A.
	cfg = tok.Config()
	cfg.Profile = "luna"
	l, err := hsm.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if c := l.Capabilities(); c.Wrap.Mechanism.Code != 0x210A || !c.Wrap.Verified {
		t.Errorf("wrap under the luna profile on SoftHSM: %+v", c.Wrap)
	}
	k, _, err := l.CreateKey(ctx, hsm.KindAES256, "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Encrypt(ctx, k, make([]byte, 64<<10), nil); err != nil {
		t.Fatalf("64 KiB: %v", err)
	}
	if _, _, err := l.Encrypt(ctx, k, make([]byte, 64<<10+1), nil); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("64 KiB + 1 under the luna profile: %v, want ErrInvalidInput", err)
	}
}
