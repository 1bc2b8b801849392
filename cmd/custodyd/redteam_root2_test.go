package main

// Round two of the rogue operator with root on the vault's host, on the
// production vault of the root drills (newRootFixture: a real 2-of-3
// ceremony, sealed starts unsealed by alice and bob, mTLS). Angles not in
// TestRootOnHostDrills: rolling back the SoftHSM token and the store while
// keeping the audit directory (so the off-box anchors still match), a store
// put back from inside the token mark's one-second window while the audit
// directory is kept, and the REST gateway and the operator's own
// certificate as paths around the officers.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/pki"
)

// openHole skips a reproducer of an open hole unless CUSTODY_OPENHOLES is
// set, so the suite stays green while the hole is documented here.
func openHole(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("CUSTODY_OPENHOLES") == "" {
		t.Skip("open hole: " + what + " (set CUSTODY_OPENHOLES=1 to run the reproducer)")
	}
}

// rt2Unseal gives alice's and bob's shares and reports whether the vault
// serves (false: the start was refused after the second share), with the
// refusal.
func rt2Unseal(t *testing.T, v *rootVault) (bool, string) {
	t.Helper()
	if inv := v.unseal(t, "alice"); inv.code != 0 {
		t.Fatalf("unseal by alice: %+v", inv)
	}
	inv := v.unseal(t, "bob")
	return inv.code == 0, inv.stderr
}

// rt2Checkpoints reads checkpoints.log: each line's seq and store revision.
func rt2Checkpoints(t *testing.T, dir string) [][2]uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "checkpoints.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]uint64
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var cp struct {
			Seq uint64 `json:"seq"`
			Rev uint64 `json:"store_revision"`
		}
		if json.Unmarshal(sc.Bytes(), &cp) == nil {
			out = append(out, [2]uint64{cp.Seq, cp.Rev})
		}
	}
	return out
}

// rt2Copy copies a file.
func rt2Copy(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRedteamRoot2TokenAndStoreRollbackKeepingTheAuditLog: root copies the
// SoftHSM token directory and the store while custodyd is stopped. Later
// the relay spends its whole budget and is frozen, and a quorum removes
// its grant; an auditor anchors a checkpoint off the box. Root stops
// custodyd, puts back the token directory and the store, and puts back
// checkpoints.log as it was with them, but keeps every audit record, so
// the audit chain still matches every anchor the auditors hold. The
// token's mark, the store and the newest checkpoint agree (all older), and
// the records after the mark verify: custodyd unseals and serves the old
// store. The grant the quorum removed is back, the budget full, the freeze
// lifted, without any officer; and `audit verify` with the anchors taken
// before, between and after passes: the anchors carry a store revision,
// but nothing compares it with the revisions of later checkpoints.
//
// The threat model (and audit.md) grant root the consistent older triple
// (token, store, audit directory) on SoftHSM and say "the off-box anchors
// catch the SoftHSM case": here the audit directory is not rolled back, so
// they did not. Fixed: every record carries the store revision it was
// written at (audit record format 3), so the start refuses a store behind
// the log's last record, whatever the mark and checkpoints.log say; root
// who rewrites the records after the old mark to hide it breaks the chain
// at the auditors' anchors.
func TestRedteamRoot2TokenAndStoreRollbackKeepingTheAuditLog(t *testing.T) {
	v, pub, before := rt2Serving(t)
	db := filepath.Join(v.data, "custody.db")
	auditDir := filepath.Join(v.data, "audit")
	if err := encryptOn(t, v.conn(t, "relay")); err != nil {
		t.Fatalf("the relay before the attack: %v", err)
	}
	v.stop(t, syscall.SIGTERM)

	// Root's copy: the token directory, the store and checkpoints.log.
	tokSnap := filepath.Join(t.TempDir(), "tokens")
	copyTree(t, v.tok.TokenDir, tokSnap)
	dbSnap := filepath.Join(t.TempDir(), "custody.db")
	rt2Copy(t, db, dbSnap)
	ckSnap := filepath.Join(t.TempDir(), "checkpoints.log")
	rt2Copy(t, filepath.Join(auditDir, "checkpoints.log"), ckSnap)

	// The relay spends its budget and is frozen; a quorum removes its grant.
	v.start(t)
	v.unsealBoth(t)
	relayConn := v.conn(t, "relay")
	served := 0
	for i := 0; i < 30; i++ {
		if encryptOn(t, relayConn) == nil {
			served++
		}
	}
	err := encryptOn(t, relayConn)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "frozen") {
		t.Fatalf("the relay is not frozen: %v", err)
	}
	id := v.propose(t, "remove-grant", "relay-msgs")
	v.approve(t, id, "alice")
	if out := v.approve(t, id, "bob"); !strings.Contains(out, "executed") {
		t.Fatalf("remove-grant: %s", out)
	}
	wantCode(t, encryptOn(t, v.conn(t, "relay")), codes.PermissionDenied, "the relay after its grant was removed")
	between := filepath.Join(t.TempDir(), "between.jsonl")
	v.anchor(t, between)
	v.stop(t, syscall.SIGTERM)
	cps := rt2Checkpoints(t, auditDir)
	t.Logf("served %d before the freeze; newest checkpoint before the rollback: seq %d store revision %d", served, cps[len(cps)-1][0], cps[len(cps)-1][1])

	// The rollback: token directory and store, checkpoints.log as it was
	// with them; every audit record kept.
	if err := os.RemoveAll(v.tok.TokenDir); err != nil {
		t.Fatal(err)
	}
	copyTree(t, tokSnap, v.tok.TokenDir)
	rt2Copy(t, dbSnap, db)
	rt2Copy(t, ckSnap, filepath.Join(auditDir, "checkpoints.log"))

	v.start(t)
	ok, why := rt2Unseal(t, v)
	if ok {
		// The quorum's removal, the spend and the freeze are gone.
		err := encryptOn(t, v.conn(t, "relay"))
		after := filepath.Join(t.TempDir(), "after.jsonl")
		v.anchor(t, after)
		inv := v.verifyAudit(t, auditDir, pub, before, between, after)
		t.Logf("rolled-back vault serves; the relay's encrypt: %v; audit verify with anchors before/between/after: code %d\n%s%s", err, inv.code, inv.stdout, inv.stderr)
		if err == nil && inv.code == 0 {
			t.Fatalf("HOLE: custodyd serves a store and token rolled back behind a quorum's remove-grant (the relay encrypts again, its freeze and spend gone) and audit verify with off-box anchors taken before, between and after passes")
		}
		if inv.code == 0 {
			t.Fatalf("custodyd serves the rolled-back store (the relay: %v) and audit verify passes", err)
		}
		v.stop(t, syscall.SIGTERM)
		return
	}
	wantAll(t, "the refusal", why, "refusing to serve")
	v.stop(t, syscall.SIGTERM)
}

// TestRedteamRoot2StoreRollbackInsideTheMarkWindowKeepingTheAuditLog: the
// token's mark follows checkpoints at most once a second. Root copies the
// store of the running vault once it is idle (its checkpoint and mark
// taken), lets the relay spend a burst, SIGKILLs custodyd at once, and puts
// the copy back, keeping the audit directory (the spend's records stay:
// nothing to cut off, so the anchors match). The mark and the newest
// checkpoint predate the spend, so custodyd serves the copy: the budget
// refilled. Repeated, a budget of volume 20 a day serves 10 per cycle
// without limit (three cycles: 33 served) — drill 2's "N crashes give no more
// than one budget" does not hold once root puts the store back between
// crash and restart. The records show every encrypt served. Fixed as the
// test above: the burst's records carry the store revision of its spend,
// above the copy's, so the start refuses the copy.
func TestRedteamRoot2StoreRollbackInsideTheMarkWindowKeepingTheAuditLog(t *testing.T) {
	v, pub, before := rt2Serving(t)
	db := filepath.Join(v.data, "custody.db")
	auditDir := filepath.Join(v.data, "audit")
	relay := v.pki.Clients["relay"].Identity

	served, cycles, refused := 0, 0, 0
	for attempt := 0; attempt < 8 && cycles < 3; attempt++ {
		if attempt > 0 {
			v.start(t)
			if ok, why := rt2Unseal(t, v); !ok {
				t.Fatalf("the real store is refused: %s", why)
			}
		}
		conn := v.conn(t, "relay")
		if err := encryptOn(t, conn); err != nil && attempt == 0 {
			t.Fatalf("the relay: %v", err)
		}
		// Idle until a checkpoint (and the mark) hold the store as it is.
		time.Sleep(2500 * time.Millisecond)
		snap := v.snapshotStore(t)
		var mu sync.Mutex
		var wg sync.WaitGroup
		n := 0
		for i := 0; i < 10; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if encryptOn(t, conn) == nil {
					mu.Lock()
					n++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		v.stop(t, syscall.SIGKILL)
		real := filepath.Join(t.TempDir(), "real.db")
		rt2Copy(t, db, real)
		rt2Copy(t, snap, db)
		v.start(t)
		ok, why := rt2Unseal(t, v)
		if !ok {
			// A checkpoint fell between the burst and the kill: the mark
			// caught the spend. Put the real store back and try again.
			refused++
			t.Logf("attempt %d: the rolled-back store was refused: %s", attempt, why)
			v.stop(t, syscall.SIGTERM)
			rt2Copy(t, real, db)
			served += n
			continue
		}
		served += n
		cycles++
		t.Logf("attempt %d: %d served, then the store from before them was put back and serves", attempt, n)
		v.stop(t, syscall.SIGTERM)
	}
	v.start(t)
	if ok, why := rt2Unseal(t, v); !ok {
		t.Fatalf("the vault does not serve after the cycles: %s", why)
	}
	n := len(auditRecordsWhere(t, auditDir, func(r map[string]any) bool {
		return r["method"] == "Encrypt" && r["identity"] == relay && r["code"] == "OK"
	}))
	v.evidenceSurvives(t, pub, before)
	t.Logf("%d encrypts served in %d rolled-back cycles (%d refused); the audit log records %d served", served, cycles, refused, n)
	if n > 20 {
		t.Fatalf("HOLE: %d encryptions served (on the record) on a budget of volume 20 a day: the store was put back from inside the mark window %d times, the audit log kept", n, cycles)
	}
	v.stop(t, syscall.SIGTERM)
}

// rt2Serving is a production vault after its ceremony, started, unsealed
// by two officers and anchored off the box: its audit public key and the
// anchor's file.
func rt2Serving(t *testing.T) (v *rootVault, pub, before string) {
	t.Helper()
	v = newRootFixture(t).clone(t)
	v.start(t)
	v.unsealBoth(t)
	pub = v.pubkey(t)
	before = filepath.Join(t.TempDir(), "before.jsonl")
	v.anchor(t, before)
	return v, pub, before
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// rt2REST posts body to the gateway at addr with hc, with extra headers.
func rt2REST(t *testing.T, hc *http.Client, addr, path string, body any, hdr map[string]string) (int, string) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, "https://"+addr+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

// TestRedteamRoot2GatewayAndOperatorPaths: root holds the operator's
// certificate and turns the REST gateway on (gateway_listen is not part of
// the trust the ceremony fixed). Through the gateway the operator asks for
// encrypt, decrypt, data keys and stored data keys, and claims the relay's
// identity in the HTTP headers the gateway would forward if it forwarded
// any; on the public gRPC port it sends the gateway's own identity, SPKI
// and roots metadata naming the relay (what the in-process connection
// carries); it asks for key changes directly. Every attempt is refused,
// every one is on the record under the operator's identity, and the audit
// log verifies with anchors before and after.
func TestRedteamRoot2GatewayAndOperatorPaths(t *testing.T) {
	f := newRootFixture(t)
	v := f.clone(t)
	relay := v.pki.Clients["relay"].Identity
	operator := v.pki.Clients["operator"].Identity
	gw := freeLoopbackAddr(t)
	cfg, err := os.ReadFile(v.cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.cfgFile, append(cfg, []byte("gateway_listen: "+gw+"\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	v.start(t)
	v.unsealBoth(t)
	pub := v.pubkey(t)
	before := filepath.Join(t.TempDir(), "before.jsonl")
	v.anchor(t, before)
	waitFor(t, "gateway listening", func() (bool, string) {
		c, err := tls.Dial("tcp", gw, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only a liveness probe
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})

	// The relay through the gateway works (the gateway is live).
	relayHC := restClientFor(t, v.pki.CAFile, v.pki.Clients["relay"])
	code, body := rt2REST(t, relayHC, gw, "/v1/crypto/encrypt", map[string]any{"key_name": "msgs", "plaintext": "bQ=="}, nil)
	if code != http.StatusOK {
		t.Fatalf("the relay through the gateway: %d %s", code, body)
	}
	var enc struct {
		Ciphertext string `json:"ciphertext"`
	}
	json.Unmarshal([]byte(body), &enc)

	opHC := restClientFor(t, v.pki.CAFile, v.pki.Clients["operator"])
	forged := map[string]string{
		"X-Custody-Gateway-Identity":               relay,
		"X-Custody-Gateway-Spki":                   f.relaySPKI,
		"Grpc-Metadata-X-Custody-Gateway-Identity": relay,
	}
	attempts := []struct {
		path string
		body any
		hdr  map[string]string
	}{
		{"/v1/crypto/encrypt", map[string]any{"key_name": "msgs", "plaintext": "bQ=="}, nil},
		{"/v1/crypto/decrypt", map[string]any{"key_name": "msgs", "ciphertext": enc.Ciphertext}, nil},
		{"/v1/crypto/decrypt", map[string]any{"key_name": "msgs", "ciphertext": enc.Ciphertext}, forged},
		{"/v1/crypto/generate-data-key", map[string]any{"key_name": "msgs"}, forged},
		{"/v1/crypto/batch-decrypt", map[string]any{"items": []any{map[string]any{"key_name": "msgs", "ciphertext": enc.Ciphertext}}}, forged},
		{"/v1/datakeys/fetch", map[string]any{"key_name": "msgs", "id": "x"}, forged},
	}
	for _, a := range attempts {
		code, body := rt2REST(t, opHC, gw, a.path, a.body, a.hdr)
		if code == http.StatusOK {
			t.Errorf("the operator through the gateway, %s (headers %v): 200 %s", a.path, a.hdr != nil, body)
			continue
		}
		if strings.Contains(body, `"plaintext"`) || strings.Contains(body, `"results"`) {
			t.Errorf("%s answered with material: %s", a.path, body)
		}
		t.Logf("gateway %s as operator (forged headers %v): %d %s", a.path, a.hdr != nil, code, firstLine(body))
	}

	// Listing stored data key ids is a metadata read operators may make by
	// design (rpc.go: ListDataKeyIds is open to the reader roles; the ids
	// are store key names root reads in the file anyway): no material.
	if code, body := rt2REST(t, opHC, gw, "/v1/datakeys/list", map[string]any{"key_name": "msgs"}, forged); code == http.StatusOK &&
		(strings.Contains(body, "plaintext") || strings.Contains(body, "wrapped")) {
		t.Errorf("the operator's listing carries material: %s", body)
	}

	// The public gRPC port with the gateway's metadata naming the relay.
	opConn := v.conn(t, "operator")
	md := metadata.Pairs("x-custody-gateway-identity", relay, "x-custody-gateway-spki", f.relaySPKI, "x-custody-gateway-roots", f.devCA.fingerprint())
	ctx := metadata.NewOutgoingContext(tctx(t), md)
	_, err = custodyv1.NewCryptoServiceClient(opConn).Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: []byte(enc.Ciphertext)})
	if err == nil || (status.Code(err) != codes.Unauthenticated && status.Code(err) != codes.PermissionDenied) {
		t.Errorf("the gateway's metadata on the public port: %v, want Unauthenticated or PermissionDenied", err)
	}
	_, err = custodyv1.NewCryptoServiceClient(opConn).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
	wantCode(t, err, codes.PermissionDenied, "the operator's own encrypt over gRPC")

	// Key changes without a proposal.
	keysC := custodyv1.NewKeyServiceClient(opConn)
	for what, call := range map[string]func() error{
		"create": func() error {
			_, err := keysC.CreateKey(tctx(t), &custodyv1.CreateKeyRequest{Name: "rootkey", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM})
			return err
		},
		"rotate": func() error {
			_, err := keysC.RotateKey(tctx(t), &custodyv1.RotateKeyRequest{Name: "msgs"})
			return err
		},
		"destroy": func() error {
			_, err := keysC.ScheduleKeyDestruction(tctx(t), &custodyv1.ScheduleKeyDestructionRequest{Name: "msgs", Version: 1})
			return err
		},
	} {
		if err := call(); err == nil {
			t.Errorf("the operator's direct key %s on a production vault succeeded", what)
		} else {
			t.Logf("key %s as operator: %v", what, err)
		}
	}

	// Every attempt is on the record under the operator's identity; none
	// under the relay's identity besides its own encrypt.
	v.stop(t, syscall.SIGTERM)
	dir := filepath.Join(v.data, "audit")
	opRecs := auditRecordsWhere(t, dir, func(r map[string]any) bool {
		return r["identity"] == operator && r["code"] != "OK" && r["code"] != nil
	})
	if len(opRecs) < len(attempts)+2 {
		t.Errorf("%d refused records of the operator, want at least %d", len(opRecs), len(attempts)+2)
	}
	relayOK := auditRecordsWhere(t, dir, func(r map[string]any) bool {
		return r["identity"] == relay && r["code"] == "OK" && r["method"] != "Encrypt"
	})
	if len(relayOK) != 0 {
		t.Errorf("records of the relay's identity served besides its encrypt: %v", relayOK)
	}
	v.start(t)
	v.unsealBoth(t)
	v.evidenceSurvives(t, pub, before)
	v.stop(t, syscall.SIGTERM)
}

// restClientFor is an HTTPS client of the gateway with client c.
func restClientFor(t *testing.T, caFile string, c pki.DevClient) *http.Client {
	t.Helper()
	cfg, err := pki.ClientTLSConfig(caFile, c.CertFile, c.KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// TestRedteamRoot2TwoCopiesOfTheTokenServeTwoBudgets: root copies the
// vault whole (SoftHSM token directory, store, audit directory; the lease
// on the copied token is the copy's own) and runs a second custodyd on the
// copy beside the first, on another port. Each is sealed; when officers
// unseal both (the second looks like any restart to them: a new unseal key
// fingerprint either way), each serves the relay a full budget, and the
// second one's records are in a chain the auditors of the first never
// anchor. The lease is on the token, so it cannot see a copy of the token.
// This needs the officers to unseal the copy, which the threat model
// already concedes ("Unsealing trusts the host at that moment"; "SoftHSM's
// token is files on this host"); the reproducer shows what that buys.
func TestRedteamRoot2TwoCopiesOfTheTokenServeTwoBudgets(t *testing.T) {
	openHole(t, "a copy of the SoftHSM token, store and audit directory, unsealed by the officers, serves a second budget beside the first")
	f := newRootFixture(t)
	a, b := f.clone(t), f.clone(t)
	a.start(t)
	a.unsealBoth(t)
	pub := a.pubkey(t)
	before := filepath.Join(t.TempDir(), "before.jsonl")
	a.anchor(t, before)
	b.start(t)
	okB, why := rt2Unseal(t, b)
	total := 0
	for _, v := range []*rootVault{a, b} {
		if v == b && !okB {
			t.Logf("the copy is refused: %s", firstLine(why))
			break
		}
		conn := v.conn(t, "relay")
		for i := 0; i < 25; i++ {
			if encryptOn(t, conn) == nil {
				total++
			}
		}
	}
	a.evidenceSurvives(t, pub, before)
	t.Logf("%d encryptions served across the vault and its copy (budget: volume 20 a day)", total)
	if total > 20 {
		t.Fatalf("HOLE (needs the officers to unseal the copy): %d encryptions served on a budget of volume 20 a day by the vault and a copy of its token; the copy's records are outside the chain the auditors anchor", total)
	}
	a.stop(t, syscall.SIGTERM)
	b.stop(t, syscall.SIGTERM)
}
