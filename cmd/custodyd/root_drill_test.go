package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
)

// TestRootOnHostDrills runs the attacks of a rogue operator with root on the
// vault's host (issue 11) against a production vault after a real 2-of-3
// ceremony (no pin_file: sealed start), each on its own copy of the vault's
// directories and token. Each attack must fail with a message naming its
// cause, and the audit log must still verify with anchors taken before and
// after. The second instance on the token is TestSealedVaultDrill's.
func TestRootOnHostDrills(t *testing.T) {
	f := newRootFixture(t)
	t.Run("1 CA file append and key-pinned grants", func(t *testing.T) { drillCAFile(t, f) })
	t.Run("2 crash cycles do not refill a budget", func(t *testing.T) { drillCrashCycles(t, f) })
	t.Run("3 audit directory rewritten trimmed or emptied", func(t *testing.T) { drillAuditRewrite(t, f) })
	t.Run("4 config edits", func(t *testing.T) { drillConfigEdits(t, f) })
	t.Run("5 store rollback", func(t *testing.T) { drillStoreRollback(t, f) })
	t.Run("7 PIN source is said everywhere", func(t *testing.T) { drillPINSource(t, f) })
}

// drillCAFile: root appends a CA of their own to tls.client_ca_file and
// mints a certificate with the relay's URI SAN. custodyd refuses to start
// on that file, naming the CA. A certificate from the site's own CA with
// the relay's name but another key gets nothing from the relay's grant,
// which is pinned to the relay's key. A set-trust proposal that removes a
// CA (and raises the time-lock: narrowing, so no time-lock) takes effect
// at once: that CA's certificates are refused UNAUTHENTICATED and audited
// although the file still holds it; then the old config is refused at
// start, naming both differences, and the config edited to match serves.
func drillCAFile(t *testing.T, f *rootFixture) {
	v := f.clone(t)
	relay := v.pki.Clients["relay"].Identity
	v.start(t)
	v.unsealBoth(t)
	pub := v.pubkey(t)
	before := filepath.Join(t.TempDir(), "before.jsonl")
	v.anchor(t, before)
	if err := encryptOn(t, v.conn(t, "relay")); err != nil {
		t.Fatalf("the relay with its own certificate: %v", err)
	}

	// The site's own CA, the relay's name, another key: the pinned grant
	// refuses it.
	impCert, impKey := f.devCA.issue(t, v.dir, "impostor", relay)
	err := encryptOn(t, v.connAs(t, impCert, impKey))
	wantCode(t, err, codes.PermissionDenied, "the relay's name on another key")
	if !strings.Contains(status.Convert(err).Message(), "pinned to another public key") {
		t.Errorf("the refusal does not say the grant is pinned: %v", err)
	}
	// ca2 is trusted by the ceremony: its certificate authenticates (and
	// is equally refused by the pin).
	ca2Cert, ca2Key := f.ca2.issue(t, v.dir, "ca2-relay", relay)
	wantCode(t, encryptOn(t, v.connAs(t, ca2Cert, ca2Key)), codes.PermissionDenied, "ca2's certificate before the set-trust")

	// Root appends their CA to the file and restarts: refused at start.
	v.stop(t, syscall.SIGTERM)
	rogue := mintCA(t, "rogue")
	orig, _ := os.ReadFile(v.caBundle)
	if err := os.WriteFile(v.caBundle, append(append([]byte{}, orig...), rogue.pem...), 0o644); err != nil {
		t.Fatal(err)
	}
	line := refusal(t, v.startRefused(t, v.cfgFile))
	wantAll(t, "the refusal of an appended CA", line,
		"disagrees with the trust fixed by the key ceremony",
		"tls.client_ca_file: ceremony does not trust CA sha256:"+rogue.fingerprint()+", config adds it")
	if err := os.WriteFile(v.caBundle, orig, 0o644); err != nil {
		t.Fatal(err)
	}

	// A set-trust that drops ca2 and lengthens the time-lock, proposed from
	// the config as it is to be.
	v.start(t)
	v.unsealBoth(t)
	devOnly := filepath.Join(v.dir, "pki", "dev-ca-only.pem")
	if err := os.WriteFile(devOnly, f.devCA.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	next := v.opts
	next.caFile, next.timeLock = devOnly, "48h"
	nextCfg := filepath.Join(v.dir, "custodyd-next.yaml")
	v.writeTrustConfig(t, nextCfg, next)
	id := v.propose(t, "set-trust", "--from-config", nextCfg)
	v.approve(t, id, "alice")
	if out := v.approve(t, id, "bob"); !strings.Contains(out, "executed") {
		t.Fatalf("a narrowing set-trust did not execute on its second approval: %s", out)
	}
	// In force at once: ca2's certificates are refused although the file
	// custodyd loaded still holds ca2, and the refusal is on the record.
	err = encryptOn(t, v.connAs(t, ca2Cert, ca2Key))
	wantCode(t, err, codes.Unauthenticated, "ca2's certificate after the set-trust")
	if !strings.Contains(status.Convert(err).Message(), "does not trust") {
		t.Errorf("refusal: %v", err)
	}
	if err := encryptOn(t, v.conn(t, "relay")); err != nil {
		t.Fatalf("the relay after the set-trust: %v", err)
	}
	v.stop(t, syscall.SIGTERM)
	recs := auditRecordsWhere(t, filepath.Join(v.data, "audit"), func(r map[string]any) bool {
		return r["code"] == "Unauthenticated" && r["identity"] == relay && strings.Contains(fmt.Sprint(r["detail"]), "does not trust")
	})
	if len(recs) != 1 {
		t.Errorf("%d audit records of the refused ca2 certificate, want 1", len(recs))
	}
	// The config as it was is refused, naming both differences; the one
	// edited to match serves.
	line = refusal(t, v.startRefused(t, v.cfgFile))
	wantAll(t, "the refusal of the old config", line,
		"tls.client_ca_file: ceremony does not trust CA sha256:"+f.ca2.fingerprint()+", config adds it",
		"governance.time_lock: ceremony 48h0m0s, config 24h0m0s")
	v.startWith(t, nextCfg)
	v.unsealBoth(t)
	if err := encryptOn(t, v.conn(t, "relay")); err != nil {
		t.Fatalf("the relay on the matching config: %v", err)
	}
	v.evidenceSurvives(t, pub, before)
	v.stop(t, syscall.SIGTERM)
}

// drillCrashCycles: the relay's budget is burst 10, volume 20 a day; root
// SIGKILLs custodyd right after each burst, five times (two officers unseal
// it each time). Spend is durable before the answer, so the five cycles
// serve at most one budget; the refusals after it freeze the relay, and
// the freeze survives the restarts.
func drillCrashCycles(t *testing.T, f *rootFixture) {
	v := f.clone(t)
	v.start(t)
	v.unsealBoth(t)
	pub := v.pubkey(t)
	before := filepath.Join(t.TempDir(), "before.jsonl")
	v.anchor(t, before)
	served := 0
	var lastErr error
	for cycle := 1; cycle <= 5; cycle++ {
		if cycle > 1 {
			v.start(t)
			v.unsealBoth(t)
		}
		conn := v.conn(t, "relay")
		var mu sync.Mutex
		var wg sync.WaitGroup
		n := 0
		for i := 0; i < 10; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := encryptOn(t, conn)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					n++
				} else {
					lastErr = err
				}
			}()
		}
		wg.Wait()
		v.stop(t, syscall.SIGKILL)
		if cycle == 1 && n != 10 {
			t.Fatalf("the first burst served %d of 10 (last error %v)", n, lastErr)
		}
		served += n
		t.Logf("cycle %d: %d served", cycle, n)
	}
	if served > 20 {
		t.Fatalf("%d encryptions served across 5 crash cycles on a budget of volume 20", served)
	}
	v.start(t)
	v.unsealBoth(t)
	err := encryptOn(t, v.conn(t, "relay"))
	wantCode(t, err, codes.ResourceExhausted, "the relay after the crash cycles")
	if !strings.Contains(status.Convert(err).Message(), "frozen") {
		t.Fatalf("the relay is not frozen after the crash cycles: %v", err)
	}
	if _, body := v.get(t, "/metrics"); !strings.Contains(body, "custody_budget_frozen 1") {
		t.Errorf("metrics do not show the freeze:\n%s", grepLines(body, "custody_budget_frozen"))
	}
	// Every attempt is on the record, and the record verifies.
	if n := len(auditRecordsWhere(t, filepath.Join(v.data, "audit"), func(r map[string]any) bool {
		return r["method"] == "Encrypt" && r["identity"] == v.pki.Clients["relay"].Identity
	})); n < 51 {
		t.Errorf("%d Encrypt records, want at least the 51 attempts", n)
	}
	v.evidenceSurvives(t, pub, before)
	v.stop(t, syscall.SIGTERM)
}

// drillAuditRewrite: with custodyd stopped, root rewrites the audit
// directory: records deleted and the chain recomputed (under root's own
// key), the log trimmed together with checkpoints.log, checkpoints.log
// removed, the directory emptied. Each time custodyd, once unsealed,
// refuses to serve, naming the directory and both positions (the token's
// audit mark holds the newest checkpoint, which root cannot rewrite without
// the PIN), and signs nothing over the forged log; `audit verify` with the
// anchors taken before and after fails on every forged or shortened
// directory. The untouched directory then serves and verifies.
func drillAuditRewrite(t *testing.T, f *rootFixture) {
	v := f.clone(t)
	v.start(t)
	v.unsealBoth(t)
	pub := v.pubkey(t)
	before := filepath.Join(t.TempDir(), "before.jsonl")
	v.anchor(t, before)
	for i := 0; i < 3; i++ {
		if err := encryptOn(t, v.conn(t, "relay")); err != nil {
			t.Fatal(err)
		}
	}
	v.stop(t, syscall.SIGTERM) // the final checkpoint is the token's mark, and in the off-box anchor file
	after := filepath.Join(t.TempDir(), "after.jsonl")
	if b, err := os.ReadFile(v.anchorFn); err != nil || len(b) == 0 {
		t.Fatalf("the off-box anchor file: %v", err)
	} else {
		os.WriteFile(after, b, 0o600)
	}
	dir := filepath.Join(v.data, "audit")
	pristine := filepath.Join(t.TempDir(), "pristine")
	copyTree(t, dir, pristine)
	recs := auditRecords(t, pristine)
	last := uint64(recs[len(recs)-1]["seq"].(float64))

	type attack struct {
		name   string
		forge  func(d string)
		says   []string
		forged bool // audit verify must fail
	}
	attacks := []attack{
		{"records deleted and re-chained", func(d string) {
			// Drop the relay's Encrypt records and re-chain the rest under
			// root's own key, padded past the last sequence number.
			os.RemoveAll(d)
			l, err := audit.Open(context.Background(), d, newRootSigner(t), audit.Options{CheckpointInterval: -1, CheckpointEvery: 1 << 40})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				if r["method"] == "Encrypt" {
					continue
				}
				appendLike(t, l, r)
			}
			for seq, _ := l.Head(); seq <= last; seq, _ = l.Head() {
				appendLike(t, l, recs[0])
			}
			l.Close(context.Background())
			os.Remove(filepath.Join(d, "checkpoints.log"))
		}, []string{"does not verify against the token's audit mark", "the log was rewritten"}, true},
		{"trimmed with its checkpoints", func(d string) {
			trimAudit(t, d, last-3)
		}, []string{fmt.Sprintf("ends at record %d, before the token's audit mark at record %d", last-3, last)}, true},
		{"checkpoints.log removed", func(d string) {
			os.Remove(filepath.Join(d, "checkpoints.log"))
		}, []string{"checkpoints.log holds no signed checkpoint at or after record", "trimmed or removed"}, false},
		{"emptied", func(d string) {
			os.RemoveAll(d)
			os.MkdirAll(d, 0o700)
		}, []string{"is empty, but the token's audit mark is at record"}, true},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			os.RemoveAll(dir)
			copyTree(t, pristine, dir)
			a.forge(dir)
			forged := filepath.Join(t.TempDir(), "forged")
			copyTree(t, dir, forged)
			v.start(t)
			why := v.unsealRefused(t)
			wantAll(t, "the refusal", why, append([]string{dir, "refusing to serve"}, a.says...)...)
			wantCode(t, encryptOn(t, v.conn(t, "relay")), codes.Unavailable, "a relay after the refused unseal")
			v.stop(t, syscall.SIGTERM)
			// Nothing was signed over the forged log.
			cps, _ := audit.ReadCheckpoints(dir)
			fcps, _ := audit.ReadCheckpoints(forged)
			if len(cps) != len(fcps) {
				t.Errorf("custodyd signed %d checkpoints over the forged directory", len(cps)-len(fcps))
			}
			inv := v.verifyAudit(t, forged, pub, before, after)
			if a.forged && inv.code == 0 {
				t.Errorf("audit verify passes the %s directory with the anchors before and after:\n%s", a.name, inv.stdout)
			}
		})
	}
	if inv := v.verifyAudit(t, pristine, pub, before, after); inv.code != 0 {
		t.Errorf("the untouched directory does not verify with the anchors: %+v", inv)
	}
	os.RemoveAll(dir)
	copyTree(t, pristine, dir)
	v.start(t)
	v.unsealBoth(t)
	v.evidenceSurvives(t, pub, before)
	v.stop(t, syscall.SIGTERM)

	// An old record edited in place, its stored hashes kept: a start reads
	// only the mark's record and what follows (its cost must not grow with
	// the log), so custodyd unseals and serves, verifies the records before
	// the mark in the background and, finding the edit, fails every request
	// closed and readiness with it.
	t.Run("a record before the mark edited in place", func(t *testing.T) {
		editOldEncryptRecord(t, dir)
		forged := filepath.Join(t.TempDir(), "forged")
		copyTree(t, dir, forged)
		v.start(t)
		v.unsealBoth(t)
		deadline := time.Now().Add(60 * time.Second)
		var err error
		for {
			err = encryptOn(t, v.conn(t, "relay"))
			if status.Code(err) == codes.Unavailable || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		wantCode(t, err, codes.Unavailable, "a relay once the edit is found")
		if code, body := v.get(t, "/readyz"); code != 503 {
			t.Errorf("readyz %d %q once the edit is found, want 503", code, body)
		}
		v.stop(t, syscall.SIGTERM)
		wantAll(t, "custodyd's log", v.stderr.String(), "audit: log condemned", "does not verify up to the token's audit mark", "a record before the mark was edited")
		if inv := v.verifyAudit(t, forged, pub, before, after); inv.code == 0 {
			t.Errorf("audit verify passes the edited directory:\n%s", inv.stdout)
		}
	})
}

// drillConfigEdits: after the ceremony root edits the config: a 1h
// time-lock instead of 24h, a freeze rule that never trips, a new operator
// and a relay made officer, dev: true (with the PIN in a file), and dev:
// true with the governance state deleted from the store so that nothing in
// it can object. custodyd refuses each at start with one message naming
// every difference (field, ceremony value, config value), and dev: true on
// the token of a production ceremony is refused by the token itself.
func drillConfigEdits(t *testing.T, f *rootFixture) {
	v := f.clone(t)
	mallory := "spiffe://custody.dev/mallory"
	type edit struct {
		name string
		opts func(o *trustOpts)
		says []string
	}
	pinFile := filepath.Join(v.dir, "pin")
	edits := []edit{
		{"time-lock", func(o *trustOpts) { o.timeLock = "1h" }, []string{"governance.time_lock: ceremony 24h0m0s, config 1h0m0s"}},
		{"freeze rule", func(o *trustOpts) { o.freezeRefusals = 10000 }, []string{"governance.freeze.refusals: ceremony 5, config 10000"}},
		{"roles", func(o *trustOpts) {
			o.extra = []string{fmt.Sprintf("{name: mallory, role: operator, uri: %q}", mallory)}
		},
			[]string{"identities[" + mallory + "].role: ceremony (none), config operator"}},
		{"all at once", func(o *trustOpts) {
			o.timeLock, o.freezeWithin = "2h", "1s"
			o.extra = []string{fmt.Sprintf("{name: mallory, role: officer, uri: %q}", mallory)}
		}, []string{"governance.time_lock: ceremony 24h0m0s, config 2h0m0s", "governance.freeze.within: ceremony 10m0s, config 1s",
			"identities[" + mallory + "].role: ceremony (none), config officer"}},
		{"dev", func(o *trustOpts) { o.dev, o.pinFile, o.timeLock = true, pinFile, "2s" },
			[]string{"dev: ceremony false (production true), config true (production false)", "governance.time_lock: ceremony 24h0m0s, config 2s"}},
	}
	// Root with the PIN (this drill recombines it from two shares to
	// stand for a site that keeps it in a file) for the dev edits.
	rec := readRecord(t, filepath.Join(v.data, "custody.db"))
	pin := pinFromShares(t, rec, v.loadOfficer(t, "alice"), v.loadOfficer(t, "bob"))
	if err := os.WriteFile(pinFile, pin, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, e := range edits {
		o := v.opts
		e.opts(&o)
		cfg := filepath.Join(v.dir, "edited.yaml")
		v.writeTrustConfig(t, cfg, o)
		line := refusal(t, v.startRefused(t, cfg))
		wantAll(t, "the refusal of the "+e.name+" edit", line, append([]string{"disagrees with the trust fixed by the key ceremony"}, e.says...)...)
	}
	// dev: true with gov/state deleted from the store: the token's
	// production marker refuses it after login, before the store is read.
	db := filepath.Join(v.data, "custody.db")
	saved, _ := os.ReadFile(db)
	raw, err := store.OpenBolt(db, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Txn(tctx(t), nil, []store.Op{store.DeleteOp("gov/state")}); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	o := v.opts
	o.dev, o.pinFile = true, pinFile
	cfg := filepath.Join(v.dir, "dev.yaml")
	v.writeTrustConfig(t, cfg, o)
	line := refusal(t, v.startRefused(t, cfg))
	wantAll(t, "the refusal of dev: true on a production token", line, "dev: true is refused: this HSM token has had a production key ceremony")
	if err := os.WriteFile(db, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(pinFile)

	// The configuration the ceremony fixed still serves, and the record
	// verifies.
	v.start(t)
	v.unsealBoth(t)
	pub := v.pubkey(t)
	before := filepath.Join(t.TempDir(), "before.jsonl")
	v.anchor(t, before)
	if err := encryptOn(t, v.conn(t, "relay")); err != nil {
		t.Fatal(err)
	}
	v.evidenceSurvives(t, pub, before)
	v.stop(t, syscall.SIGTERM)
}

// drillStoreRollback: after a quorum removed the relay's grant and the relay
// spent its budget and got frozen, root puts back an older copy of the
// store (grant present, budget unspent, not frozen): the whole file; the
// whole file with checkpoints.log trimmed to hide the newer revision; the
// store and the audit directory rolled back together; one record (the
// governance state, which restores the grant; the budget record, which
// refills it and lifts the freeze). custodyd refuses each once unsealed,
// naming the store (and, for a whole store, both revisions).
func drillStoreRollback(t *testing.T, f *rootFixture) {
	v := f.clone(t)
	db := filepath.Join(v.data, "custody.db")
	auditDir := filepath.Join(v.data, "audit")
	oldDB := filepath.Join(t.TempDir(), "old.db")
	oldAudit := filepath.Join(t.TempDir(), "old-audit")
	copyTree(t, auditDir, oldAudit)
	b, _ := os.ReadFile(db)
	os.WriteFile(oldDB, b, 0o600)

	v.start(t)
	v.unsealBoth(t)
	pub := v.pubkey(t)
	before := filepath.Join(t.TempDir(), "before.jsonl")
	v.anchor(t, before)
	relayConn := v.conn(t, "relay")
	for i := 0; i < 30; i++ { // 20 served, then refusals until frozen
		_ = encryptOn(t, relayConn)
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
	v.stop(t, syscall.SIGTERM)
	current, _ := os.ReadFile(db)
	currentAudit := filepath.Join(t.TempDir(), "cur-audit")
	copyTree(t, auditDir, currentAudit)

	copyRecord := func(prefix string) {
		from, err := store.OpenBolt(oldDB, store.BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kvs, err := from.List(tctx(t), prefix, "", 0)
		from.Close()
		if err != nil || len(kvs) == 0 {
			t.Fatalf("no %s in the old store: %v", prefix, err)
		}
		to, err := store.OpenBolt(db, store.BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer to.Close()
		if err := to.Txn(tctx(t), nil, []store.Op{store.PutOp(kvs[0].Key, kvs[0].Value)}); err != nil {
			t.Fatal(err)
		}
	}
	rollbacks := []struct {
		name string
		do   func()
		says []string
	}{
		{"whole file", func() { os.WriteFile(db, b, 0o600) },
			[]string{"store bbolt " + db + " is older than the audit log: its revision is", "recorded revision"}},
		{"whole file, checkpoints.log trimmed", func() {
			os.WriteFile(db, b, 0o600)
			os.Remove(filepath.Join(auditDir, "checkpoints.log"))
		}, []string{"store bbolt " + db + " is at revision", "older than revision", "recorded by the token's audit mark"}},
		{"store and audit directory together", func() {
			os.WriteFile(db, b, 0o600)
			os.RemoveAll(auditDir)
			copyTree(t, oldAudit, auditDir)
		}, []string{"audit directory " + auditDir + " ends at record", "store bbolt " + db + " is at revision", "recorded by the token's audit mark"}},
		{"one record: the grant", func() { copyRecord("gov/state") },
			[]string{"store bbolt " + db + " was rolled back or had records deleted outside custodyd", "anchor"}},
		{"one record: the budget", func() { copyRecord("gov/budget/msgs/") },
			[]string{"store bbolt " + db + " was rolled back or had records deleted outside custodyd", "anchor"}},
	}
	for _, r := range rollbacks {
		t.Run(r.name, func(t *testing.T) {
			r.do()
			v.start(t)
			why := v.unsealRefused(t)
			wantAll(t, "the refusal", why, append([]string{"refusing to serve"}, r.says...)...)
			v.stop(t, syscall.SIGTERM)
			os.WriteFile(db, current, 0o600)
			os.RemoveAll(auditDir)
			copyTree(t, currentAudit, auditDir)
		})
	}
	// The store as the quorum left it: no grant, and still frozen.
	v.start(t)
	v.unsealBoth(t)
	wantCode(t, encryptOn(t, v.conn(t, "relay")), codes.PermissionDenied, "the relay after its grant was removed")
	v.evidenceSurvives(t, pub, before)
	v.stop(t, syscall.SIGTERM)
}

// drillPINSource: a sealed production vault says, in its transcript, its
// status and its metrics, that its PIN is split among the officers; the
// same vault started with the PIN in a file (root who has it) says so in
// each of those places it can, and in its log.
func drillPINSource(t *testing.T, f *rootFixture) {
	v := f.clone(t)
	var tr quorum.Transcript
	doc, err := os.ReadFile(filepath.Join(v.dir, "transcript", "transcript.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(doc, &tr); err != nil || tr.Seal == nil || tr.Seal.PINSource != "officers" {
		t.Fatalf("transcript seal section %+v (%v)", tr.Seal, err)
	}
	if tr.Trust == nil || !tr.Trust.Production || len(tr.Trust.ClientCAs) != 2 || tr.Trust.TimeLock.String() != "24h0m0s" {
		t.Fatalf("transcript trust section %+v", tr.Trust)
	}
	v.start(t)
	if st := v.sealStatus(t); st.GetPinSource() != "officers" {
		t.Fatalf("sealed status pin source %q", st.GetPinSource())
	}
	v.unsealBoth(t)
	if _, body := v.get(t, "/metrics"); !strings.Contains(body, `custody_seal_pin_source{source="officers"} 1`) ||
		!strings.Contains(body, "custody_audit_token_mark 1") {
		t.Fatalf("metrics:\n%s", grepLines(body, "pin_source")+grepLines(body, "token_mark"))
	}
	inv := v.ctlAs(t, "auditor", nil, "status")
	wantAll(t, "custodyctl status", inv.stdout, "audit mark:  on the HSM token at record")
	v.stop(t, syscall.SIGTERM)

	pinFile := filepath.Join(v.dir, "pin")
	rec := readRecord(t, filepath.Join(v.data, "custody.db"))
	if err := os.WriteFile(pinFile, pinFromShares(t, rec, v.loadOfficer(t, "alice"), v.loadOfficer(t, "carol")), 0o600); err != nil {
		t.Fatal(err)
	}
	o := v.opts
	o.pinFile = pinFile
	cfg := filepath.Join(v.dir, "pinfile.yaml")
	v.writeTrustConfig(t, cfg, o)
	v.startUnsealed(t, cfg)
	if st := v.sealStatus(t); st.GetPinSource() != "pin_file" {
		t.Fatalf("status pin source %q", st.GetPinSource())
	}
	if _, body := v.get(t, "/metrics"); !strings.Contains(body, `custody_seal_pin_source{source="pin_file"} 1`) {
		t.Fatalf("metrics:\n%s", grepLines(body, "pin_source"))
	}
	wantAll(t, "custodyd's log", v.stderr.String(), "the HSM PIN is read from pin_file on this host")
	v.stop(t, syscall.SIGTERM)
}

// appendLike appends a copy of a record read from an audit segment.
func appendLike(t *testing.T, l *audit.Log, r map[string]any) {
	t.Helper()
	b, _ := json.Marshal(r)
	var rec audit.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	rec.Seq, rec.PrevHash, rec.Hash = 0, nil, nil
	if _, err := l.Append(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
}

// trimAudit cuts an audit directory after record keep, and checkpoints.log
// after the last checkpoint at or before it.
func trimAudit(t *testing.T, dir string, keep uint64) {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "audit-*.log"))
	for _, s := range segs {
		var out bytes.Buffer
		fh, err := os.Open(s)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r struct {
				Seq uint64 `json:"seq"`
			}
			if json.Unmarshal(sc.Bytes(), &r) == nil && r.Seq <= keep {
				out.Write(sc.Bytes())
				out.WriteByte('\n')
			}
		}
		fh.Close()
		os.WriteFile(s, out.Bytes(), 0o600)
	}
	cps, _ := audit.ReadCheckpoints(dir)
	var out bytes.Buffer
	for _, cp := range cps {
		if cp.Seq <= keep {
			b, _ := json.Marshal(cp)
			out.Write(append(b, '\n'))
		}
	}
	os.WriteFile(filepath.Join(dir, "checkpoints.log"), out.Bytes(), 0o600)
}

// editOldEncryptRecord turns the first Encrypt record of the audit
// directory from ok to denied in place, leaving every stored hash as it was.
func editOldEncryptRecord(t *testing.T, dir string) {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "audit-*.log"))
	for _, seg := range segs {
		b, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(b, []byte(`"method":"Encrypt"`))
		if i < 0 {
			continue
		}
		j := bytes.Index(b[i:], []byte(`"outcome":"ok"`))
		if j < 0 || bytes.IndexByte(b[i:i+j], '\n') >= 0 {
			continue
		}
		out := append(append(append([]byte(nil), b[:i+j]...), `"outcome":"denied"`...), b[i+j+len(`"outcome":"ok"`):]...)
		if err := os.WriteFile(seg, out, 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("no Encrypt record to edit")
}
