package main

// Red team: a compromised relay (its client certificate and key, the
// network path) against a production vault. Each test shows the attack
// failing and the evidence surviving: the audit log verifies against
// anchors taken before and after, and the signed transparency report counts
// exactly what the relay got.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// tally counts what an attacker got and what was refused, by path.
type tally struct {
	mu                   sync.Mutex
	ok, denied           map[string]int
	callRefused, unknown map[string]int
}

func newTally() *tally {
	return &tally{ok: map[string]int{}, denied: map[string]int{}, callRefused: map[string]int{}, unknown: map[string]int{}}
}

func (tl *tally) add(m map[string]int, path string, n int) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	m[path] += n
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// isRefusal: the answers that mean "not for you" (budget, freeze, grant).
func isRefusal(c codes.Code) bool { return c == codes.ResourceExhausted || c == codes.PermissionDenied }

// restItems counts the results of a REST batch answer: ok items and
// refused items; anything else is unknown.
func restItems(body []byte) (ok, refused, other int) {
	var resp struct {
		Results []struct {
			Response json.RawMessage `json:"response"`
			Error    *struct {
				Code int `json:"code"`
			} `json:"error"`
		} `json:"results"`
	}
	if json.Unmarshal(body, &resp) != nil {
		return 0, 0, 1
	}
	for _, r := range resp.Results {
		switch {
		case r.Error != nil && isRefusal(codes.Code(r.Error.Code)):
			refused++
		case r.Error != nil:
			other++
		default:
			ok++
		}
	}
	return ok, refused, other
}

// TestCompromisedRelayGetsNoMorePlaintextThanItsBudgetOnEveryPathAtOnce:
// the relay's budget on key msgs is 60 operations a day. With its own
// certificate it attacks on every path that opens a key at once — gRPC
// Decrypt, BatchDecrypt, Unwrap, Rewrap, FetchDataKey, and the REST
// gateway's decrypt and batch-unwrap — until every path is refused. It gets
// no more openings than the budget left; the report counts every one of
// them and every refusal, on key msgs and on the relay's identity; the log
// verifies against anchors taken before and after; and the metrics show
// every opening and every refusal, batch items included (an operator's
// "budget refusals" alert reads them).
func TestCompromisedRelayGetsNoMorePlaintextThanItsBudgetOnEveryPathAtOnce(t *testing.T) {
	const budget = 60
	v := newRedVault(t, budget)
	v.serve(t)
	relay := v.identity["relay"]
	cc := custodyv1.NewCryptoServiceClient(v.conn(t, "relay"))
	dk := custodyv1.NewDataKeyServiceClient(v.conn(t, "relay"))
	hc := restClient(t, v.pki.CAFile, v.pki, "relay")

	// What the relay legitimately holds: a ciphertext, a wrapped data key
	// and a stored one (3 units of the budget).
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
	left := budget - 3
	before := v.metrics(t)

	dec := &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: ct.GetCiphertext()}
	unw := &custodyv1.UnwrapRequest{KeyName: "msgs", WrappedKey: gk.GetWrappedKey()}
	restDec := map[string]any{"key_name": "msgs", "ciphertext": base64.StdEncoding.EncodeToString(ct.GetCiphertext())}
	restUnw := map[string]any{"key_name": "msgs", "wrapped_key": base64.StdEncoding.EncodeToString(gk.GetWrappedKey())}
	tl := newTally()
	// single runs one call and reports its code.
	single := func(path string, call func() error) func() bool {
		return func() bool {
			err := call()
			switch c := status.Code(err); {
			case c == codes.OK:
				tl.add(tl.ok, path, 1)
			case isRefusal(c):
				tl.add(tl.denied, path, 1)
				return false
			default:
				tl.add(tl.unknown, path, 1)
				t.Errorf("%s: %v", path, err)
				return false
			}
			return true
		}
	}
	// batchItems counts a batch's item results; a refusal of the whole call
	// (admission) opens nothing and is no item.
	batchItems := func(path string, call func() ([]*custodyv1.ItemError, error)) func() bool {
		return func() bool {
			errs, err := call()
			if err != nil {
				if isRefusal(status.Code(err)) {
					tl.add(tl.callRefused, path, 1)
					return false
				}
				tl.add(tl.unknown, path, 1)
				t.Errorf("%s: %v", path, err)
				return false
			}
			got := false
			for _, e := range errs {
				switch {
				case e == nil:
					tl.add(tl.ok, path, 1)
					got = true
				case isRefusal(codes.Code(e.GetCode())):
					tl.add(tl.denied, path, 1)
				default:
					tl.add(tl.unknown, path, 1)
					t.Errorf("%s item: %v", path, e)
				}
			}
			return got
		}
	}
	restCall := func(path, url string, body any, batch bool) func() bool {
		return func() bool {
			code, out, err := v.rest(t, hc, url, body)
			switch {
			case err != nil:
				tl.add(tl.unknown, path, 1)
				t.Errorf("%s: %v", path, err)
				return false
			case code == http.StatusOK && batch:
				ok, refused, other := restItems(out)
				tl.add(tl.ok, path, ok)
				tl.add(tl.denied, path, refused)
				if other > 0 {
					tl.add(tl.unknown, path, other)
					t.Errorf("%s: %s", path, out)
				}
				return ok > 0
			case code == http.StatusOK:
				tl.add(tl.ok, path, 1)
				return true
			case code == http.StatusTooManyRequests || code == http.StatusForbidden:
				if batch {
					tl.add(tl.callRefused, path, 1)
				} else {
					tl.add(tl.denied, path, 1)
				}
				return false
			default:
				tl.add(tl.unknown, path, 1)
				t.Errorf("%s: HTTP %d %s", path, code, out)
				return false
			}
		}
	}
	decErrs := func(r *custodyv1.BatchDecryptResponse) []*custodyv1.ItemError {
		var out []*custodyv1.ItemError
		for _, x := range r.GetResults() {
			out = append(out, x.GetError())
		}
		return out
	}
	unwErrs := func(r *custodyv1.BatchUnwrapResponse) []*custodyv1.ItemError {
		var out []*custodyv1.ItemError
		for _, x := range r.GetResults() {
			out = append(out, x.GetError())
		}
		return out
	}
	batchDec := make([]*custodyv1.DecryptRequest, 10)
	batchUnw := make([]*custodyv1.UnwrapRequest, 5)
	for i := range batchDec {
		batchDec[i] = dec
	}
	for i := range batchUnw {
		batchUnw[i] = unw
	}
	restBatch := map[string]any{"items": []any{restUnw, restUnw, restUnw, restUnw, restUnw}}
	paths := map[string]func() bool{
		"grpc Decrypt": single("grpc Decrypt", func() error { _, err := cc.Decrypt(tctx(t), dec); return err }),
		"grpc Unwrap":  single("grpc Unwrap", func() error { _, err := cc.Unwrap(tctx(t), unw); return err }),
		"grpc Rewrap": single("grpc Rewrap", func() error {
			_, err := cc.Rewrap(tctx(t), &custodyv1.RewrapRequest{KeyName: "msgs", WrappedKey: gk.GetWrappedKey()})
			return err
		}),
		"grpc FetchDataKey": single("grpc FetchDataKey", func() error {
			_, err := dk.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "msgs", Id: "conv-1"})
			return err
		}),
		"grpc BatchDecrypt": batchItems("grpc BatchDecrypt", func() ([]*custodyv1.ItemError, error) {
			r, err := cc.BatchDecrypt(tctx(t), &custodyv1.BatchDecryptRequest{Items: batchDec})
			return decErrs(r), err
		}),
		"grpc BatchUnwrap": batchItems("grpc BatchUnwrap", func() ([]*custodyv1.ItemError, error) {
			r, err := cc.BatchUnwrap(tctx(t), &custodyv1.BatchUnwrapRequest{Items: batchUnw})
			return unwErrs(r), err
		}),
		"rest decrypt":      restCall("rest decrypt", "/v1/crypto/decrypt", restDec, false),
		"rest batch-unwrap": restCall("rest batch-unwrap", "/v1/crypto/batch-unwrap", restBatch, true),
	}
	// Every path runs at once, each until it has been refused three times
	// in a row (bounded: 60 calls each).
	var wg sync.WaitGroup
	for name, attempt := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			refusedInARow := 0
			for i := 0; i < 60 && refusedInARow < 3; i++ {
				if attempt() {
					refusedInARow = 0
				} else {
					refusedInARow++
				}
			}
			_ = name
		}()
	}
	wg.Wait()
	if sum(tl.unknown) > 0 {
		t.Fatalf("unexpected answers: %v", tl.unknown)
	}
	opened, refused := sum(tl.ok), sum(tl.denied)
	t.Logf("opened %d (budget left %d), refused %d items/calls, %d batch calls refused whole; by path ok=%v denied=%v",
		opened, left, refused, sum(tl.callRefused), tl.ok, tl.denied)
	if opened > left {
		t.Fatalf("the relay opened %d keys with %d units of budget left", opened, left)
	}
	if opened == 0 || refused == 0 {
		t.Fatalf("the attack did not reach the budget: opened %d, refused %d", opened, refused)
	}
	// Still refused on every path now, including the stored key.
	_, err = dk.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "msgs", Id: "conv-1"})
	if !isRefusal(status.Code(err)) {
		t.Fatalf("fetch after the budget is spent: %v", err)
	}
	refused++

	// The evidence: the log verifies with anchors before and after; the
	// signed report counts each opening and each refusal, once, and the
	// one data key the set-up generated.
	rep := v.evidence(t)
	counted := uint64(opened) + 1
	if k := keyCount(rep, "msgs"); k.Operations != counted || k.Denied != uint64(refused) {
		t.Errorf("report on key msgs: %+v, want %d operations and %d denied", k, counted, refused)
	}
	if id := idCount(rep, relay); id.Operations != counted || id.Denied != uint64(refused) {
		t.Errorf("report on the relay: %+v, want %d operations and %d denied", id, counted, refused)
	}
	if rep.Operations != counted {
		t.Errorf("report total %d operations, want %d", rep.Operations, counted)
	}

	// The metrics: every opening and every refusal, batch items too.
	after := v.metrics(t)
	delta := func(method, code string) int {
		s := fmt.Sprintf(`custody_requests_total{code=%q,method=%q}`, code, method)
		return int(metricValue(after, s) - metricValue(before, s))
	}
	okBy := func(paths ...string) (n int) {
		for _, p := range paths {
			n += tl.ok[p]
		}
		return n
	}
	for _, c := range []struct {
		method string
		want   int
	}{
		{"Decrypt", okBy("grpc Decrypt", "rest decrypt")},
		{"Unwrap", okBy("grpc Unwrap")},
		{"Rewrap", okBy("grpc Rewrap")},
		{"FetchDataKey", okBy("grpc FetchDataKey")},
		{"BatchDecrypt[i]", okBy("grpc BatchDecrypt")},
		{"BatchUnwrap[i]", okBy("grpc BatchUnwrap", "rest batch-unwrap")},
	} {
		if got := delta(c.method, "OK"); got != c.want {
			t.Errorf("metrics: custody_requests_total{method=%q,code=OK} rose by %d, want %d", c.method, got, c.want)
		}
	}
	var refusedInMetrics int
	for _, l := range strings.Split(after, "\n") {
		if strings.HasPrefix(l, "custody_requests_total{") && (strings.Contains(l, `code="ResourceExhausted"`) || strings.Contains(l, `code="PermissionDenied"`)) {
			series := l[:strings.LastIndexByte(l, ' ')]
			refusedInMetrics += int(metricValue(after, series) - metricValue(before, series))
		}
	}
	if want := refused + sum(tl.callRefused); refusedInMetrics != want {
		t.Errorf("metrics show %d refusals (calls and batch items), want %d", refusedInMetrics, want)
	}
}

// answer is what a caller can observe of a refusal: code and message.
func answer(err error) string {
	st := status.Convert(err)
	return st.Code().String() + ": " + st.Message()
}

// TestCompromisedRelayLearnsAndTouchesNothingOfAnotherTenant: two tenants
// share key "shared", each granted it only under its own tenant context.
// Tenant A's relay is compromised. It cannot tell whether tenant B stored an
// id (the same answer for B's id as for one that does not exist, on gRPC
// and on REST), cannot fetch, overwrite or delete B's stored key, cannot
// list B's ids, cannot open B's ciphertexts under either context, and
// cannot tell a key that exists but is not granted to it from one that does
// not exist. Storing the same id at once from both tenants, and twice at
// once from A over gRPC and REST, gives each tenant its own key and A
// exactly one. Every refusal is on the record and the log verifies.
func TestCompromisedRelayLearnsAndTouchesNothingOfAnotherTenant(t *testing.T) {
	v := newRedVault(t, 1000)
	v.serve(t)
	a := custodyv1.NewDataKeyServiceClient(v.conn(t, "relay"))
	b := custodyv1.NewDataKeyServiceClient(v.conn(t, "relay-b"))
	ac := custodyv1.NewCryptoServiceClient(v.conn(t, "relay"))
	bc := custodyv1.NewCryptoServiceClient(v.conn(t, "relay-b"))
	hc := restClient(t, v.pki.CAFile, v.pki, "relay")
	gen := func(id string, c map[string]string) *custodyv1.StoreDataKeyRequest {
		return &custodyv1.StoreDataKeyRequest{KeyName: "shared", Id: id, Context: c, Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}}
	}
	fetch := func(c custodyv1.DataKeyServiceClient, id string, ctx map[string]string) ([]byte, error) {
		r, err := c.FetchDataKey(tctx(t), &custodyv1.FetchDataKeyRequest{KeyName: "shared", Id: id, Context: ctx})
		return r.GetPlaintext(), err
	}
	if _, err := b.StoreDataKey(tctx(t), gen("conv-7", tenantB)); err != nil {
		t.Fatal(err)
	}
	bKey, err := fetch(b, "conv-7", tenantB)
	if err != nil {
		t.Fatal(err)
	}
	bCT, err := bc.Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "shared", Plaintext: []byte("tenant b's message"), Context: tenantB})
	if err != nil {
		t.Fatal(err)
	}

	// Existence: B's id answers exactly as an id nobody stored.
	for _, c := range []map[string]string{tenantA, tenantB, {"tenant": "b", "x": "y"}, nil} {
		_, e1 := fetch(a, "conv-7", c)
		_, e2 := fetch(a, "conv-never", c)
		if answer(e1) != answer(e2) || status.Code(e1) == codes.OK {
			t.Errorf("fetch under %v: B's id answers %q, a missing id %q", c, answer(e1), answer(e2))
		}
		_, e1 = a.DeleteDataKey(tctx(t), &custodyv1.DeleteDataKeyRequest{KeyName: "shared", Id: "conv-7", Context: c})
		_, e2 = a.DeleteDataKey(tctx(t), &custodyv1.DeleteDataKeyRequest{KeyName: "shared", Id: "conv-never", Context: c})
		if answer(e1) != answer(e2) || status.Code(e1) == codes.OK {
			t.Errorf("delete under %v: B's id answers %q, a missing id %q", c, answer(e1), answer(e2))
		}
	}
	for _, c := range []map[string]string{tenantA, tenantB} {
		c1, b1, err1 := v.rest(t, hc, "/v1/datakeys/fetch", map[string]any{"key_name": "shared", "id": "conv-7", "context": c})
		c2, b2, err2 := v.rest(t, hc, "/v1/datakeys/fetch", map[string]any{"key_name": "shared", "id": "conv-never", "context": c})
		if err1 != nil || err2 != nil || c1 != c2 || string(b1) != string(b2) || c1 == http.StatusOK {
			t.Errorf("REST fetch under %v: B's id %d %s, a missing id %d %s (%v %v)", c, c1, b1, c2, b2, err1, err2)
		}
	}
	// Listing: A's grant on "shared" is limited to its context, so it may
	// not list the ids of every context.
	_, err = a.ListDataKeyIds(tctx(t), &custodyv1.ListDataKeyIdsRequest{KeyName: "shared"})
	wantCode(t, err, codes.PermissionDenied, "tenant A lists the shared key's ids")
	// B's ciphertext opens for neither of A's choices of context.
	_, err = ac.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: "shared", Ciphertext: bCT.GetCiphertext(), Context: tenantB})
	wantCode(t, err, codes.PermissionDenied, "A decrypts B's ciphertext naming B's context")
	_, err = ac.Decrypt(tctx(t), &custodyv1.DecryptRequest{KeyName: "shared", Ciphertext: bCT.GetCiphertext(), Context: tenantA})
	wantCode(t, err, codes.InvalidArgument, "A decrypts B's ciphertext under its own context")
	// Keys: one that exists but is not granted answers as one that does
	// not exist (B has no grant on msgs).
	_, e1 := bc.Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
	_, e2 := bc.Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgz", Plaintext: []byte("x")})
	if status.Code(e1) != codes.PermissionDenied || answer(e1) != strings.ReplaceAll(answer(e2), "msgz", "msgs") {
		t.Errorf("an ungranted key answers %q, a missing key %q", answer(e1), answer(e2))
	}

	// Two of something at once: A stores conv-7 (its own namespace) over
	// gRPC and REST while B stores a new id race-1 and A the same id.
	var wg sync.WaitGroup
	var grpcErr, raceA, raceB error
	var restCode int
	wg.Add(4)
	go func() { defer wg.Done(); _, grpcErr = a.StoreDataKey(tctx(t), gen("conv-7", tenantA)) }()
	go func() {
		defer wg.Done()
		restCode, _, _ = v.rest(t, hc, "/v1/datakeys/store", map[string]any{"key_name": "shared", "id": "conv-7", "context": tenantA, "generate": true})
	}()
	go func() { defer wg.Done(); _, raceA = a.StoreDataKey(tctx(t), gen("race-1", tenantA)) }()
	go func() { defer wg.Done(); _, raceB = b.StoreDataKey(tctx(t), gen("race-1", tenantB)) }()
	wg.Wait()
	if (grpcErr == nil) == (restCode == http.StatusOK) || (grpcErr != nil && status.Code(grpcErr) != codes.AlreadyExists) ||
		(restCode != http.StatusOK && restCode != http.StatusConflict) {
		t.Errorf("A's two stores of conv-7 at once: gRPC %v, REST %d; want exactly one, the other AlreadyExists", grpcErr, restCode)
	}
	if raceA != nil || raceB != nil {
		t.Errorf("both tenants storing race-1 at once: A %v, B %v", raceA, raceB)
	}
	// B's key is untouched by everything A did.
	if got, err := fetch(b, "conv-7", tenantB); err != nil || string(got) != string(bKey) {
		t.Fatalf("B's stored key after the attack: %v (same bytes: %v)", err, string(got) == string(bKey))
	}
	if aKey, err := fetch(a, "conv-7", tenantA); err != nil || string(aKey) == string(bKey) {
		t.Fatalf("A's own conv-7: %v (equal to B's: %v)", err, string(aKey) == string(bKey))
	}

	// The evidence: every refused fetch and delete by A is on the record,
	// and the log verifies with anchors before and after.
	rep := v.evidence(t)
	var refused int
	for _, r := range recordsOf(t, v.data+"/audit", "FetchDataKey", "DeleteDataKey", "ListDataKeyIds") {
		if r["identity"] == v.identity["relay"] && r["outcome"] != "ok" {
			refused++
		}
	}
	// 4 contexts x 2 ids x (fetch + delete) over gRPC, 2 x 2 over REST, 1 listing.
	if want := 4*2*2 + 2*2 + 1; refused != want {
		t.Errorf("%d refused data-key calls by A on the record, want %d", refused, want)
	}
	if id := idCount(rep, v.identity["relay"]); id.Operations != 1 {
		t.Errorf("report on A: %+v, want the 1 fetch of its own key", id)
	}
}
