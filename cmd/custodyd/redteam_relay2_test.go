package main

// Red team, second round: a compromised relay (its client certificate and
// key, the network path: gRPC, the REST gateway and the Go client) against
// a production vault after a real 2-of-3 ceremony. New angles beyond
// redteam_relay_test.go: the budget spent through every path at once,
// the Go client's coalesced path included, across volume-window boundaries;
// encryption-context tricks and format conversions aimed at another
// tenant's data; existence oracles (status, message, latency) for keys and
// stored ids; and what the signed transparency report counts.

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/client"
)

// rt2Window is the relay's volume window on key msgs in the windowed vault.
const rt2Window = 3 * time.Second

// rt2Records are the audit records of identity whose method is a call or a
// batch item (batch parents carry only a tally and spend nothing).
func rt2Records(t *testing.T, v *redVault, identity string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, r := range auditRecords(t, v.data+"/audit") {
		m, _ := r["method"].(string)
		if r["identity"] != identity || m == "BatchDecrypt" || m == "BatchUnwrap" || m == "BatchEncrypt" {
			continue
		}
		out = append(out, r)
	}
	return out
}

// TestRedteamRelay2BudgetHoldsOnEveryPathAcrossWindowBoundaries: the
// relay's budget on msgs is 160 units per 3-second window (reservations of
// 10 units at a time). For about three windows it spends on every path at
// once — gRPC Decrypt, BatchDecrypt, Unwrap, Rewrap, FetchDataKey,
// GenerateDataKey, the REST gateway's decrypt, batch-decrypt, unwrap and
// fetch, and the Go client's coalesced Decrypt from eight goroutines — and
// each path, when refused, waits for the next window (so the freeze rule
// does not end the attack early). Per window (by the audit records' time)
// the units spent never exceed the volume by more than what can be in
// flight at a boundary; in total they never exceed the volume times the
// windows the attack touched; every success the relay saw is one ok record,
// every refusal a denied record; the report counts every opening once.
func TestRedteamRelay2BudgetHoldsOnEveryPathAcrossWindowBoundaries(t *testing.T) {
	const volume = 160
	v := newRedVault(t, volume)
	cer, err := os.ReadFile(v.ceremonyFile)
	if err != nil {
		t.Fatal(err)
	}
	old := fmt.Sprintf("burst: %d, volume: %d, window: 24h", volume, volume)
	if !bytes.Contains(cer, []byte(old)) {
		t.Fatalf("ceremony has no %q", old)
	}
	cer = bytes.Replace(cer, []byte(old), []byte(fmt.Sprintf("burst: %d, volume: %d, window: 3s", volume, volume)), 1)
	if err := os.WriteFile(v.ceremonyFile, cer, 0o644); err != nil {
		t.Fatal(err)
	}
	v.serve(t)
	relay := v.identity["relay"]
	cc := custodyv1.NewCryptoServiceClient(v.conn(t, "relay"))
	dk := custodyv1.NewDataKeyServiceClient(v.conn(t, "relay"))
	hc := restClient(t, v.pki.CAFile, v.pki, "relay")
	rc := v.pki.Clients["relay"]
	gc, err := client.Dial(tctx(t), client.Config{Addr: v.addr, ServerName: "localhost", CAFile: v.pki.CAFile,
		CertFile: rc.CertFile, KeyFile: rc.KeyFile, Block: true, CoalesceDecrypts: true, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()

	// What the relay holds (spent in whatever window this is).
	ct, err := cc.Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("the secret")})
	if err != nil {
		t.Fatal(err)
	}
	gk, err := cc.GenerateDataKey(tctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "msgs", WithoutPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dk.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: "msgs", Id: "conv-1",
		Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}}); err != nil {
		t.Fatal(err)
	}
	// Start the attack at a window's start, so it spans three whole ones.
	time.Sleep(time.Until(time.Now().Truncate(rt2Window).Add(rt2Window + 20*time.Millisecond)))
	start := time.Now()
	stop := start.Add(3*rt2Window - 300*time.Millisecond)

	dec := &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: ct.GetCiphertext()}
	unw := &custodyv1.UnwrapRequest{KeyName: "msgs", WrappedKey: gk.GetWrappedKey()}
	b64 := base64.StdEncoding.EncodeToString
	restDec := map[string]any{"key_name": "msgs", "ciphertext": b64(ct.GetCiphertext())}
	restUnw := map[string]any{"key_name": "msgs", "wrapped_key": b64(gk.GetWrappedKey())}
	restFetch := map[string]any{"key_name": "msgs", "id": "conv-1"}

	var mu sync.Mutex
	okBy, refusedBy := map[string]int{}, map[string]int{} // by audited method
	opened := 0                                           // successes that yield plaintext or a data key (opened or generated)
	note := func(method string, ok, open bool) {
		mu.Lock()
		defer mu.Unlock()
		if ok {
			okBy[method]++
			if open {
				opened++
			}
		} else {
			refusedBy[method]++
		}
	}
	// outcome classifies one answer: true ok, false refused; anything else fails the test.
	outcome := func(what string, err error) (ok, refused bool) {
		if err == nil {
			return true, false
		}
		if errors.Is(err, client.ErrBudgetExhausted) || isRefusal(status.Code(err)) {
			return false, true
		}
		t.Errorf("%s: %v", what, err)
		return false, false
	}
	single := func(method string, open bool, call func() error) func() bool {
		return func() bool {
			ok, refused := outcome(method, call())
			if ok || refused {
				note(method, ok, open)
			}
			return ok
		}
	}
	items := func(method string, errs []*custodyv1.ItemError, err error) bool {
		if err != nil {
			t.Errorf("%s: %v", method, err)
			return false
		}
		got := false
		for _, e := range errs {
			switch {
			case e == nil:
				note(method+"[i]", true, true)
				got = true
			case isRefusal(codes.Code(e.GetCode())):
				note(method+"[i]", false, true)
			default:
				t.Errorf("%s item: %v", method, e)
			}
		}
		return got
	}
	rest := func(method, path string, body any, batch bool) func() bool {
		return func() bool {
			code, out, err := v.rest(t, hc, path, body)
			switch {
			case err != nil:
				t.Errorf("REST %s: %v", path, err)
			case code == http.StatusOK && batch:
				ok, refused, other := restItems(out)
				for range ok {
					note(method+"[i]", true, true)
				}
				for range refused {
					note(method+"[i]", false, true)
				}
				if other > 0 {
					t.Errorf("REST %s: %s", path, out)
				}
				return ok > 0
			case code == http.StatusOK:
				note(method, true, true)
				return true
			case code == http.StatusTooManyRequests || code == http.StatusForbidden:
				note(method, false, true)
			default:
				t.Errorf("REST %s: HTTP %d %s", path, code, out)
			}
			return false
		}
	}
	batchDec := []*custodyv1.DecryptRequest{dec, dec, dec, dec, dec, dec, dec, dec, dec, dec}
	paths := []func() bool{
		single("Decrypt", true, func() error { _, err := cc.Decrypt(tctx(t), dec); return err }),
		single("Unwrap", true, func() error { _, err := cc.Unwrap(tctx(t), unw); return err }),
		single("Rewrap", true, func() error {
			_, err := cc.Rewrap(tctx(t), &custodyv1.RewrapRequest{KeyName: "msgs", WrappedKey: gk.GetWrappedKey()})
			return err
		}),
		single("FetchDataKey", true, func() error {
			_, err := dk.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "msgs", Id: "conv-1"})
			return err
		}),
		single("GenerateDataKey", true, func() error {
			_, err := cc.GenerateDataKey(tctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "msgs"})
			return err
		}),
		func() bool {
			r, err := cc.BatchDecrypt(tctx(t), &custodyv1.BatchDecryptRequest{Items: batchDec})
			var errs []*custodyv1.ItemError
			for _, x := range r.GetResults() {
				errs = append(errs, x.GetError())
			}
			return items("BatchDecrypt", errs, err)
		},
		rest("Decrypt", "/v1/crypto/decrypt", restDec, false),
		rest("Unwrap", "/v1/crypto/unwrap", restUnw, false),
		rest("FetchDataKey", "/v1/datakeys/fetch", restFetch, false),
		rest("BatchDecrypt", "/v1/crypto/batch-decrypt", map[string]any{"items": []any{restDec, restDec, restDec, restDec, restDec}}, true),
	}
	// The Go client: eight goroutines at once, so calls coalesce into
	// BatchDecrypt (items) or go alone (Decrypt); which one is read from
	// the audit records, so the client's successes are counted apart.
	var clientOK, clientRefused atomic.Int64
	for range 8 {
		paths = append(paths, func() bool {
			pt, err := gc.Decrypt(tctx(t), "msgs", ct.GetCiphertext(), nil)
			ok, refused := outcome("client Decrypt", err)
			switch {
			case ok && string(pt) == "the secret":
				clientOK.Add(1)
				mu.Lock()
				opened++
				mu.Unlock()
			case ok:
				t.Errorf("client Decrypt: wrong plaintext")
			case refused:
				clientRefused.Add(1)
			}
			return ok
		})
	}
	var wg sync.WaitGroup
	var calls atomic.Int64
	for _, attempt := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000 && time.Now().Before(stop); i++ {
				calls.Add(1)
				if !attempt() {
					// Refused: wait for the next window, as a relay
					// honouring RetryInfo would.
					next := time.Now().Truncate(rt2Window).Add(rt2Window + 15*time.Millisecond)
					if next.After(stop) {
						return
					}
					time.Sleep(time.Until(next))
				}
			}
		}()
	}
	wg.Wait()
	end := time.Now()
	if t.Failed() {
		t.FailNow()
	}

	// Per window, from the audit records: ok units spent on msgs.
	perWindow := map[int64]int{}
	var attackOK, attackDenied int
	auditOK, auditDenied := map[string]int{}, map[string]int{}
	for _, r := range rt2Records(t, v, relay) {
		if r["key"] != "msgs" {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, r["time"].(string))
		if err != nil {
			t.Fatal(err)
		}
		inAttack := !ts.Before(start)
		switch r["outcome"] {
		case "ok":
			perWindow[ts.Truncate(rt2Window).Unix()]++
			if inAttack {
				attackOK++
				auditOK[strings.SplitN(r["method"].(string), "[", 2)[0]]++
			}
		case "denied":
			if inAttack {
				attackDenied++
				auditDenied[strings.SplitN(r["method"].(string), "[", 2)[0]]++
			}
		}
	}
	var windows []int64
	for w := range perWindow {
		windows = append(windows, w)
	}
	sort.Slice(windows, func(i, j int) bool { return windows[i] < windows[j] })
	t.Logf("attack %s over %d calls; ok units per window %v (windows %v); client ok=%d refused=%d; ok by method %v, refused %v",
		end.Sub(start).Round(time.Millisecond), calls.Load(), perWindow, windows, clientOK.Load(), clientRefused.Load(), okBy, refusedBy)
	// A unit taken just before a boundary may be recorded just after it:
	// at most one per request in flight (18 attackers).
	const inFlight = 18
	for _, w := range windows {
		if perWindow[w] > volume+inFlight {
			t.Errorf("window starting %s: %d units spent, volume %d", time.Unix(w, 0).UTC().Format(time.TimeOnly), perWindow[w], volume)
		}
	}
	touched := int(end.Truncate(rt2Window).Sub(start.Truncate(rt2Window))/rt2Window) + 1
	if attackOK > volume*touched {
		t.Errorf("the attack spent %d units in %d windows of %d", attackOK, touched, volume)
	}
	if touched < 3 || attackOK < 2*volume || attackDenied == 0 {
		t.Fatalf("the attack did not reach the budget in several windows: %d windows, %d ok, %d denied", touched, attackOK, attackDenied)
	}
	// Every success and refusal the relay saw is on the record, per method
	// (the client's calls are the Decrypt and BatchDecrypt records beyond
	// what the other paths saw).
	for _, m := range []string{"Unwrap", "Rewrap", "FetchDataKey", "GenerateDataKey"} {
		if auditOK[m] != okBy[m] || auditDenied[m] != refusedBy[m] {
			t.Errorf("%s: relay saw %d ok and %d refused, the audit log has %d and %d", m, okBy[m], refusedBy[m], auditOK[m], auditDenied[m])
		}
	}
	seenDec := okBy["Decrypt"] + okBy["BatchDecrypt[i]"] + int(clientOK.Load())
	if got := auditOK["Decrypt"] + auditOK["BatchDecrypt"]; got != seenDec {
		t.Errorf("decryptions: the relay got %d plaintexts, the audit log has %d ok", seenDec, got)
	}
	if got, want := auditDenied["Decrypt"]+auditDenied["BatchDecrypt"], refusedBy["Decrypt"]+refusedBy["BatchDecrypt[i]"]+int(clientRefused.Load()); got != want {
		t.Errorf("refused decryptions: the relay saw %d, the audit log has %d", want, got)
	}
	// The signed report counts every opening and every data key generated
	// (before the attack: the one wrapped data key of the set-up).
	rep := v.evidence(t)
	if k := keyCount(rep, "msgs"); k.Operations != uint64(opened)+1 {
		t.Errorf("report on msgs: %d operations, the relay opened or generated %d", k.Operations, opened+1)
	}
}

// rt2Answer is a refusal as a caller sees it, with the key name put back
// to a placeholder so that answers about two names compare.
func rt2Answer(err error, name string) string {
	return strings.ReplaceAll(answer(err), name, "KEY")
}

// TestRedteamRelay2ContextTricksConversionsAndOraclesAcrossTenants: key
// "shared" holds tenants a (relay) and b (relay-b), each granted only its
// own context. The compromised relay A tries to open B's ciphertext, wrapped
// key, sealed key and stored key with contexts built to satisfy its grant
// while matching B's binding (extra pairs, case and Unicode look-alikes of
// the key, duplicate JSON keys on REST, empty values), converts them
// through its other grants (Unwrap for a ciphertext, Rewrap on msgs,
// StoreDataKey of B's wrapped key under its own context), and looks for
// oracles of existence: a key that exists but is not granted against one
// that does not, on every method and the gateway's GET routes; malformed
// ids; and the latency of a fetch of B's id against a missing one. Nothing
// opens, no answer tells the cases apart, and every request is on the
// record. Last, the report: GenerateDataKey hands out plaintext data keys
// that the signed report does not count (an open hole, skipped).
func TestRedteamRelay2ContextTricksConversionsAndOraclesAcrossTenants(t *testing.T) {
	v := newRedVault(t, 1000)
	v.serve(t)
	relayA, relayB := v.identity["relay"], v.identity["relay-b"]
	ac := custodyv1.NewCryptoServiceClient(v.conn(t, "relay"))
	bc := custodyv1.NewCryptoServiceClient(v.conn(t, "relay-b"))
	a := custodyv1.NewDataKeyServiceClient(v.conn(t, "relay"))
	b := custodyv1.NewDataKeyServiceClient(v.conn(t, "relay-b"))
	ha := restClient(t, v.pki.CAFile, v.pki, "relay")
	hb := restClient(t, v.pki.CAFile, v.pki, "relay-b")
	b64 := base64.StdEncoding.EncodeToString

	// B's data: a ciphertext, a wrapped key, a sealed key (plaintext
	// generate) and a stored key, all under tenant b.
	bCT, err := bc.Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "shared", Plaintext: []byte("tenant b's secret"), Context: tenantB})
	if err != nil {
		t.Fatal(err)
	}
	bWK, err := bc.GenerateDataKey(tctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "shared", Context: tenantB, WithoutPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	bSK, err := bc.GenerateDataKey(tctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "shared", Context: tenantB})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: "shared", Id: "conv-7", Context: tenantB,
		Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}}); err != nil {
		t.Fatal(err)
	}
	before := map[string]int{relayA: len(rt2Records(t, v, relayA)), relayB: len(rt2Records(t, v, relayB))}
	calls := map[string]int{} // requests made by each identity from here on (records expected)

	// 1. Contexts that satisfy A's grant (tenant=a) and try to match B's
	// binding, or that try B's context through some normalisation.
	tricks := []map[string]string{
		tenantB,
		{"tenant": "a", "Tenant": "b"},
		{"tenant": "a", "tenant ": "b"},
		{"tenant": "a", "tеnant": "b"}, // Cyrillic е
		{"tenant": "a", "tenant\u200b": "b"},
		{"tenant": "b\u0000a"},
		{"tenant": "a\u0000b"},
		{"Tenant": "a", "tenant": "b"},
		{"tenant": "a", "": "b"},
		{"tenant": "a", "x": ""},
		{"tenant": "ａ"}, // full-width a
		{"tenant": "a"},
	}
	for _, c := range tricks {
		what := fmt.Sprintf("%q", c)
		_, err := ac.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: "shared", Ciphertext: bCT.GetCiphertext(), Context: c})
		calls[relayA]++
		if status.Code(err) == codes.OK {
			t.Errorf("HOLE: A decrypted B's ciphertext under %s", what)
		}
		for _, wk := range [][]byte{bWK.GetWrappedKey(), bSK.GetWrappedKey()} {
			_, err = ac.Unwrap(tctx(t), &custodyv1.UnwrapRequest{KeyName: "shared", WrappedKey: wk, Context: c})
			calls[relayA]++
			if status.Code(err) == codes.OK {
				t.Errorf("HOLE: A unwrapped B's data key under %s", what)
			}
		}
		_, err = a.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "shared", Id: "conv-7", Context: c})
		calls[relayA]++
		if status.Code(err) == codes.OK {
			t.Errorf("HOLE: A fetched B's stored key under %s", what)
		}
	}
	// Duplicate JSON keys in the REST context: whichever one the gateway
	// keeps, the grant and the binding see the same map.
	for _, raw := range []string{
		`{"key_name":"shared","ciphertext":"%s","context":{"tenant":"b","tenant":"a"}}`,
		`{"key_name":"shared","ciphertext":"%s","context":{"tenant":"a","tenant":"b"}}`,
		`{"key_name":"shared","ciphertext":"%s","context":{"tenant":"a"},"context":{"tenant":"b"}}`,
		`{"key_name":"shared","ciphertext":"%s","context":{"tenant":"b"},"context":{"tenant":"a"}}`,
		`{"key_name":"shared","ciphertext":"%s","context":{"tenant":"a","tenant\u0000":"b"}}`,
		`{"key_name":"shared","ciphertext":"%s","context":{"tenant":"a"},"Context":{"tenant":"b"}}`,
	} {
		body := fmt.Sprintf(raw, b64(bCT.GetCiphertext()))
		resp, err := ha.Post("https://"+v.gwAddr+"/v1/crypto/decrypt", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		calls[relayA]++ // forwarded or, if it does not decode, recorded as undecodable
		if resp.StatusCode == http.StatusOK || bytes.Contains(out, []byte(b64([]byte("tenant b's secret")))) {
			t.Errorf("HOLE: REST decrypt of B's ciphertext with %s: %d %s", body, resp.StatusCode, out)
		}
	}

	// 2. Conversions through A's other grants: B's ciphertext as a wrapped
	// key, B's wrapped key re-bound by storing it under A's context, B's
	// data under key msgs (where A may rewrap and unwrap without context).
	conv := []struct {
		what string
		call func() error
	}{
		{"Unwrap of B's ciphertext as a wrapped key", func() error {
			_, err := ac.Unwrap(tctx(t), &custodyv1.UnwrapRequest{KeyName: "shared", WrappedKey: bCT.GetCiphertext(), Context: tenantA})
			return err
		}},
		{"Decrypt of B's sealed key as a ciphertext", func() error {
			_, err := ac.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: "shared", Ciphertext: bSK.GetWrappedKey(), Context: tenantA})
			return err
		}},
		{"StoreDataKey of B's wrapped key under tenant a", func() error {
			_, err := a.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: "shared", Id: "stolen-1", Context: tenantA,
				Source: &custodyv1.StoreDataKeyRequest_WrappedKey{WrappedKey: bWK.GetWrappedKey()}})
			return err
		}},
		{"StoreDataKey of B's sealed key under tenant a", func() error {
			_, err := a.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: "shared", Id: "stolen-2", Context: tenantA,
				Source: &custodyv1.StoreDataKeyRequest_WrappedKey{WrappedKey: bSK.GetWrappedKey()}})
			return err
		}},
		{"Rewrap on msgs of B's wrapped key under B's context", func() error {
			_, err := ac.Rewrap(tctx(t), &custodyv1.RewrapRequest{KeyName: "msgs", WrappedKey: bWK.GetWrappedKey(), Context: tenantB})
			return err
		}},
		{"Rewrap on msgs of B's sealed key under B's context", func() error {
			_, err := ac.Rewrap(tctx(t), &custodyv1.RewrapRequest{KeyName: "msgs", WrappedKey: bSK.GetWrappedKey(), Context: tenantB})
			return err
		}},
		{"Unwrap on msgs of B's wrapped key under B's context", func() error {
			_, err := ac.Unwrap(tctx(t), &custodyv1.UnwrapRequest{KeyName: "msgs", WrappedKey: bWK.GetWrappedKey(), Context: tenantB})
			return err
		}},
		{"Decrypt on msgs of B's ciphertext under B's context", func() error {
			_, err := ac.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: bCT.GetCiphertext(), Context: tenantB})
			return err
		}},
		{"StoreDataKey on msgs of B's wrapped key under B's context", func() error {
			_, err := a.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: "msgs", Id: "stolen-3", Context: tenantB,
				Source: &custodyv1.StoreDataKeyRequest_WrappedKey{WrappedKey: bWK.GetWrappedKey()}})
			return err
		}},
	}
	for _, c := range conv {
		err := c.call()
		calls[relayA]++
		if c := status.Code(err); c != codes.InvalidArgument && c != codes.PermissionDenied {
			t.Errorf("HOLE? %s: %v, want InvalidArgument or PermissionDenied", c, err)
		}
	}

	// 3. Existence oracles, as relay-b (no grant on msgs): msgs exists, msgz
	// does not. Every method, gRPC and REST, answers both the same.
	probes := []struct {
		what string
		call func(key string) string
	}{
		{"Decrypt", func(k string) string {
			_, err := bc.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: k, Ciphertext: bCT.GetCiphertext()})
			return rt2Answer(err, k)
		}},
		{"GetPublicKey", func(k string) string {
			_, err := bc.GetPublicKey(tctx(t), &custodyv1.GetPublicKeyRequest{KeyName: k})
			return rt2Answer(err, k)
		}},
		{"Mac", func(k string) string {
			_, err := bc.Mac(tctx(t), &custodyv1.MacRequest{KeyName: k, Data: []byte("x")})
			return rt2Answer(err, k)
		}},
		{"Sign", func(k string) string {
			_, err := bc.Sign(tctx(t), &custodyv1.SignRequest{KeyName: k, Input: &custodyv1.SignRequest_Message{Message: []byte("x")}})
			return rt2Answer(err, k)
		}},
		{"Rewrap", func(k string) string {
			_, err := bc.Rewrap(tctx(t), &custodyv1.RewrapRequest{KeyName: k, WrappedKey: bWK.GetWrappedKey()})
			return rt2Answer(err, k)
		}},
		{"ListDataKeyIds", func(k string) string {
			_, err := b.ListDataKeyIds(tctx(t), &custodyv1.ListDataKeyIdsRequest{KeyName: k})
			return rt2Answer(err, k)
		}},
		{"FetchDataKey", func(k string) string {
			_, err := b.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: k, Id: "conv-1"})
			return rt2Answer(err, k)
		}},
		{"DeleteDataKey", func(k string) string {
			_, err := b.DeleteDataKey(tctx(t), &custodyv1.DeleteDataKeyRequest{KeyName: k, Id: "conv-1"})
			return rt2Answer(err, k)
		}},
		{"StoreDataKey", func(k string) string {
			_, err := b.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: k, Id: "probe",
				Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}})
			return rt2Answer(err, k)
		}},
		{"StoreDataKey, id over 128 bytes", func(k string) string {
			_, err := b.StoreDataKey(tctx(t), &custodyv1.StoreDataKeyRequest{KeyName: k, Id: strings.Repeat("x", 129),
				Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}})
			return rt2Answer(err, k)
		}},
		{"FetchDataKey, id with '/'", func(k string) string {
			_, err := b.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: k, Id: "../conv-1"})
			return rt2Answer(err, k)
		}},
		{"FetchDataKey, id with a combining mark", func(k string) string {
			_, err := b.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: k, Id: "conv-1\u0301"})
			return rt2Answer(err, k)
		}},
		{"BatchDecrypt item", func(k string) string {
			r, err := bc.BatchDecrypt(tctx(t), &custodyv1.BatchDecryptRequest{Items: []*custodyv1.DecryptRequest{{KeyName: k, Ciphertext: bCT.GetCiphertext()}}})
			if err != nil {
				return rt2Answer(err, k)
			}
			e := r.GetResults()[0].GetError()
			return strings.ReplaceAll(fmt.Sprintf("%d %s", e.GetCode(), e.GetMessage()), k, "KEY")
		}},
		{"REST list", func(k string) string {
			code, out, err := v.rest(t, hb, "/v1/datakeys/list", map[string]any{"key_name": k})
			if err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("%d %s", code, strings.ReplaceAll(string(out), k, "KEY"))
		}},
		{"REST get-public-key", func(k string) string {
			code, out, err := v.rest(t, hb, "/v1/crypto/get-public-key", map[string]any{"key_name": k})
			if err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("%d %s", code, strings.ReplaceAll(string(out), k, "KEY"))
		}},
		{"REST GET /v1/keys/{name}", func(k string) string {
			resp, err := hb.Get("https://" + v.gwAddr + "/v1/keys/" + k)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			return fmt.Sprintf("%d %s", resp.StatusCode, strings.ReplaceAll(string(out), k, "KEY"))
		}},
	}
	for _, p := range probes {
		exists, missing := p.call("msgs"), p.call("msgz")
		calls[relayB] += 2 // (a batch's parent record is not counted, its item is)
		if exists != missing {
			t.Errorf("%s: a key that exists answers %q, one that does not %q", p.what, exists, missing)
		}
		if strings.HasPrefix(exists, "OK") || strings.HasPrefix(exists, "200") {
			t.Errorf("HOLE: %s on an ungranted key answered %q", p.what, exists)
		}
	}

	// 4. Latency: A fetching B's id (it exists, under another context)
	// against an id nobody stored. Alternate, 40 of each, compare medians.
	sample := func(id string) time.Duration {
		t0 := time.Now()
		_, err := a.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "shared", Id: id, Context: tenantA})
		d := time.Since(t0)
		calls[relayA]++
		if status.Code(err) != codes.NotFound {
			t.Fatalf("fetch %s: %v", id, err)
		}
		return d
	}
	var bIDs, none []time.Duration
	for i := 0; i < 40; i++ {
		bIDs = append(bIDs, sample("conv-7"))
		none = append(none, sample("conv-never"))
	}
	slices.Sort(bIDs)
	slices.Sort(none)
	mb, mn := bIDs[len(bIDs)/2], none[len(none)/2]
	t.Logf("fetch latency medians: B's id %s, missing id %s", mb, mn)
	if d := max(mb, mn) - min(mb, mn); d > 2*time.Millisecond && d > min(mb, mn)/2 {
		t.Errorf("latency oracle: B's id answers in %s, a missing id in %s", mb, mn)
	}

	// B's stored key is untouched and A stored nothing.
	if _, err := b.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "shared", Id: "conv-7", Context: tenantB}); err != nil {
		t.Fatalf("B's stored key after the attack: %v", err)
	}
	calls[relayB]++

	// The evidence: every request made above is one record (batch items
	// counted as items), and none of A's is an ok opening.
	for id, n := range calls {
		got := len(rt2Records(t, v, id)) - before[id]
		if got != n {
			t.Errorf("%s: %d records since the attack began, %d requests made", id, got, n)
		}
	}
	for _, r := range rt2Records(t, v, relayA)[before[relayA]:] {
		if r["outcome"] == "ok" || r["outcome"] == "intent" {
			t.Errorf("HOLE: A's request succeeded: %v", r)
		}
	}
	rep := v.evidence(t)
	if id := idCount(rep, relayA); id.Operations != 0 {
		t.Errorf("report on A: %+v, want no openings", id)
	}

	// 5. The report and generated data keys: B generated a plaintext data
	// key above (bSK) and can generate more within its budget; the
	// transparency report should count them (docs/api.md: report counts
	// "generate"; docs/audit.md: every call that yields plaintext or a
	// data key).
	t.Run("report counts plaintext data keys generated", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			r, err := bc.GenerateDataKey(context.Background(), &custodyv1.GenerateDataKeyRequest{KeyName: "shared", Context: tenantB})
			if err != nil || len(r.GetPlaintext()) != 32 {
				t.Fatalf("generate: %v", err)
			}
		}
		rep := v.evidence(t)
		if !slices.Contains(rep.Methods, "GenerateDataKey") {
			t.Errorf("HOLE: the signed report counts methods %v: 6 plaintext data keys handed to relay-b are in no count", rep.Methods)
		}
		if id := idCount(rep, relayB); id.Operations < 6 {
			t.Errorf("HOLE: report on relay-b: %+v; it received at least 6 plaintext data keys", id)
		}
	})
}
