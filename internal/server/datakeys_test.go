package server_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/testenv"
)

// The relay's key-transport key pair, made once (RSA-3072 generation is slow).
var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
	rsaDER  []byte
)

func relayRSA(t testing.TB) (*rsa.PrivateKey, []byte) {
	rsaOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 3072)
		if err != nil {
			panic(err)
		}
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			panic(err)
		}
		rsaKey, rsaDER = k, der
	})
	return rsaKey, rsaDER
}

// dkEnv is a custodyd with key "dk" (and the never-granted "secret") and
// these relays, all pinned to the same recipient key:
//
//	relay           datakey+unwrap on dk, any context, plaintext allowed
//	tenant-a/-b     datakey+unwrap on dk, context tenant=a / tenant=b, plaintext allowed
//	transport-only  datakey+unwrap on dk, any context, plaintext NOT allowed
//	stranger        a certificate from the CA but no identity
func dkEnv(t *testing.T) *testenv.Env {
	t.Helper()
	_, der := relayRSA(t)
	sum := sha256.Sum256(der)
	pin := []string{hex.EncodeToString(sum[:])}
	ops := []config.Operation{config.OpDataKey, config.OpUnwrap}
	relays := []string{"tenant-a", "tenant-b", "transport-only"}
	e := testenv.Start(t, testenv.Settings{
		ExtraClients: append([]string{"stranger"}, relays...),
		Mutate: func(e *testenv.Env, c *config.Config) {
			for _, r := range relays {
				c.Identities = append(c.Identities, config.IdentityConfig{Name: r, Role: config.RoleRelay, URI: e.Cert[r].Identity})
			}
			c.Grants = append(c.Grants,
				config.GrantConfig{Identity: "dev-relay", Keys: []string{"dk"}, Operations: ops, AllowPlaintext: true, RecipientKeys: pin},
				config.GrantConfig{Identity: "tenant-a", Keys: []string{"dk"}, Operations: ops, AllowPlaintext: true, RecipientKeys: pin, ContextMatch: map[string]string{"tenant": "a"}},
				config.GrantConfig{Identity: "tenant-b", Keys: []string{"dk"}, Operations: ops, AllowPlaintext: true, RecipientKeys: pin, ContextMatch: map[string]string{"tenant": "b"}},
				config.GrantConfig{Identity: "transport-only", Keys: []string{"dk"}, Operations: ops, RecipientKeys: pin},
			)
		},
	})
	// Until custodyd's daemon wires the store itself, give it to the server
	// here; doing it twice is harmless.
	e.D.Server.SetDataKeyStore(e.D.Store)
	e.CreateKey(t, "dk", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	e.CreateKey(t, "secret", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	return e
}

func dataKeys(t *testing.T, e *testenv.Env, client string) custodyv1.DataKeyServiceClient {
	return custodyv1.NewDataKeyServiceClient(e.Dial(t, client))
}

func generate(key, id string, c map[string]string) *custodyv1.StoreDataKeyRequest {
	return &custodyv1.StoreDataKeyRequest{KeyName: key, Id: id, Context: c, Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}}
}

func oaepDecrypt(t *testing.T, how string, ct []byte) []byte {
	t.Helper()
	k, _ := relayRSA(t)
	h := crypto.SHA1
	if how == "RSA-OAEP-SHA256" {
		h = crypto.SHA256
	}
	pt, err := rsa.DecryptOAEP(h.New(), nil, k, ct, nil)
	if err != nil {
		t.Fatalf("recipient cannot decrypt its data key (%s): %v", how, err)
	}
	return pt
}

// allIDs lists every id under key as the operator.
func allIDs(t *testing.T, e *testenv.Env, key string) []string {
	t.Helper()
	var ids []string
	c := dataKeys(t, e, "operator")
	tok := ""
	for {
		r, err := c.ListDataKeyIds(ctx(t), &custodyv1.ListDataKeyIdsRequest{KeyName: key, PageSize: 1000, PageToken: tok})
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		ids = append(ids, r.GetIds()...)
		if tok = r.GetNextPageToken(); tok == "" {
			return ids
		}
	}
}

func TestStoredDataKeyFetchesAsPlaintextAndToRecipient(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	dk := dataKeys(t, e, "relay")
	_, der := relayRSA(t)
	c := map[string]string{"conversation": "42"}

	st, err := dk.StoreDataKey(x, generate("dk", "conv:42", c))
	if err != nil {
		t.Fatalf("store: %v", err)
	}
	if st.GetId() != "conv:42" || st.GetKeyVersion() != 1 {
		t.Fatalf("store answered %v", st)
	}
	plain, err := dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "conv:42", Context: c})
	if err != nil {
		t.Fatalf("fetch plaintext: %v", err)
	}
	if len(plain.GetPlaintext()) != 32 || len(plain.GetRecipientWrappedKey()) != 0 || plain.GetKeyVersion() != 1 {
		t.Fatalf("plaintext fetch: %d-byte key, %d-byte recipient copy, version %d", len(plain.GetPlaintext()), len(plain.GetRecipientWrappedKey()), plain.GetKeyVersion())
	}
	again, err := dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "conv:42", Context: c})
	if err != nil || !bytes.Equal(again.GetPlaintext(), plain.GetPlaintext()) {
		t.Fatalf("second fetch gave a different key (err %v)", err)
	}

	sent, err := dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "conv:42", Context: c, RecipientPublicKey: der})
	if err != nil {
		t.Fatalf("fetch to recipient: %v", err)
	}
	if len(sent.GetPlaintext()) != 0 {
		t.Fatal("a fetch to a recipient also returned the plaintext")
	}
	if got := oaepDecrypt(t, sent.GetRecipientWrapping(), sent.GetRecipientWrappedKey()); !bytes.Equal(got, plain.GetPlaintext()) {
		t.Fatal("the recipient's copy is not the stored data key")
	}

	// Keeping an existing wrapped key: the fetched key is the one generated.
	gen, err := e.Crypto(t, "relay").GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "dk", Context: c})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dk.StoreDataKey(x, &custodyv1.StoreDataKeyRequest{KeyName: "dk", Id: "kept", Context: c,
		Source: &custodyv1.StoreDataKeyRequest_WrappedKey{WrappedKey: gen.GetWrappedKey()}}); err != nil {
		t.Fatalf("store wrapped: %v", err)
	}
	kept, err := dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "kept", Context: c})
	if err != nil || !bytes.Equal(kept.GetPlaintext(), gen.GetPlaintext()) {
		t.Fatalf("kept key fetched differently (err %v)", err)
	}

	// A wrapped key is verified before it is kept: the wrong context, or
	// bytes that are not an envelope, are refused and nothing is stored.
	_, err = dk.StoreDataKey(x, &custodyv1.StoreDataKeyRequest{KeyName: "dk", Id: "wrong-ctx", Context: map[string]string{"conversation": "43"},
		Source: &custodyv1.StoreDataKeyRequest_WrappedKey{WrappedKey: gen.GetWrappedKey()}})
	wantCode(t, err, codes.InvalidArgument, "wrapped key under another context")
	_, err = dk.StoreDataKey(x, &custodyv1.StoreDataKeyRequest{KeyName: "dk", Id: "garbage", Context: c,
		Source: &custodyv1.StoreDataKeyRequest_WrappedKey{WrappedKey: []byte("not an envelope")}})
	wantCode(t, err, codes.InvalidArgument, "garbage wrapped key")

	// An id is kept once; storing over it is refused and the key is unchanged.
	_, err = dk.StoreDataKey(x, generate("dk", "conv:42", c))
	wantCode(t, err, codes.AlreadyExists, "storing over a taken id")
	after, err := dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "conv:42", Context: c})
	if err != nil || !bytes.Equal(after.GetPlaintext(), plain.GetPlaintext()) {
		t.Fatalf("the refused store changed the key (err %v)", err)
	}
	if got := allIDs(t, e, "dk"); !slices.Equal(got, []string{"conv:42", "kept"}) {
		t.Fatalf("stored ids %v, want [conv:42 kept]", got)
	}

	// Each fetch is audited as the caller's request on the key, with the id.
	var fetches int
	err = e.D.Audit.Read(x, audit.Filter{Method: "FetchDataKey"}, func(r audit.Record) error {
		if r.Outcome == audit.OutcomeOK && r.Key == "dk" && r.KeyVersion == 1 && r.Detail == "id=conv:42" && len(r.ContextDigest) == 32 {
			fetches++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fetches != 4 {
		t.Fatalf("%d audited fetches of conv:42, want 4", fetches)
	}
}

func TestStoredDataKeyNeverStoredInClear(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	dk := dataKeys(t, e, "relay")
	if _, err := dk.StoreDataKey(x, generate("dk", "c1", nil)); err != nil {
		t.Fatal(err)
	}
	f, err := dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	kvs, err := e.D.Store.List(x, "dk/dk/", "", 0)
	if err != nil || len(kvs) != 1 || !strings.HasSuffix(kvs[0].Key, "/c1") {
		t.Fatalf("record not at dk/<key>/<context digest>/<id>: %v %v", kvs, err)
	}
	if bytes.Contains(kvs[0].Value, f.GetPlaintext()) {
		t.Fatal("the store holds the data key in clear")
	}
}

func TestFetchAsPlaintextNeedsTheGrantsPermission(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	_, der := relayRSA(t)
	dk := dataKeys(t, e, "transport-only")
	if _, err := dk.StoreDataKey(x, generate("dk", "t1", nil)); err != nil {
		t.Fatalf("store: %v", err)
	}
	_, err := dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "t1"})
	wantCode(t, err, codes.PermissionDenied, "plaintext fetch without allow_plaintext")
	r, err := dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "t1", RecipientPublicKey: der})
	if err != nil || len(r.GetRecipientWrappedKey()) == 0 || len(r.GetPlaintext()) != 0 {
		t.Fatalf("fetch to recipient: %v", err)
	}
	// A recipient key the grant does not pin is refused.
	other, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	otherDER, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	_, err = dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "t1", RecipientPublicKey: otherDER})
	wantCode(t, err, codes.PermissionDenied, "unpinned recipient")
}

func TestUnknownIDIsNotFoundOnlyAfterAuthorization(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	if _, err := dataKeys(t, e, "relay").StoreDataKey(x, generate("dk", "exists", nil)); err != nil {
		t.Fatal(err)
	}
	_, err := dataKeys(t, e, "relay").FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "missing"})
	wantCode(t, err, codes.NotFound, "granted relay, unknown id")

	// Callers without the grant get the same answer whether or not the id
	// (or the key) exists.
	for _, who := range []string{"stranger", "operator", "officer", "auditor"} {
		for _, id := range []string{"exists", "missing"} {
			_, err := dataKeys(t, e, who).FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: id})
			wantCode(t, err, codes.PermissionDenied, who+" fetching "+id)
		}
	}
	for _, key := range []string{"secret", "no-such-key"} {
		_, err := dataKeys(t, e, "relay").FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: key, Id: "exists"})
		wantCode(t, err, codes.PermissionDenied, "relay fetching from ungranted key "+key)
		_, err = dataKeys(t, e, "relay").StoreDataKey(x, generate(key, "x", nil))
		wantCode(t, err, codes.PermissionDenied, "relay storing under ungranted key "+key)
	}
}

// Ids are scoped by the context a key is stored under: a tenant-restricted
// relay gets the same answer for another tenant's id as for an id that does
// not exist, and can store under an id another tenant uses without learning
// that it does.
func TestStoredIDsDoNotLeakAcrossTenants(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	a, b := dataKeys(t, e, "tenant-a"), dataKeys(t, e, "tenant-b")
	ctxA, ctxB := map[string]string{"tenant": "a"}, map[string]string{"tenant": "b"}
	if _, err := a.StoreDataKey(x, generate("dk", "a-1", ctxA)); err != nil {
		t.Fatalf("tenant a store: %v", err)
	}
	_, err := a.StoreDataKey(x, generate("dk", "a-2", ctxB))
	wantCode(t, err, codes.PermissionDenied, "tenant a storing under tenant b's context")

	// Tenant b asking with a's context: outside its grant.
	_, err = b.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "a-1", Context: ctxA})
	wantCode(t, err, codes.PermissionDenied, "tenant b with tenant a's context")
	// Tenant b asking with its own context for a's id is answered exactly as
	// for an id nobody stored.
	_, errTaken := b.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "a-1", Context: ctxB})
	wantCode(t, errTaken, codes.NotFound, "tenant b fetching a's id with its own context")
	_, errNone := b.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "never-stored", Context: ctxB})
	wantCode(t, errNone, codes.NotFound, "tenant b fetching an id nobody stored")
	if m1, m2 := status.Convert(errTaken).Message(), status.Convert(errNone).Message(); m1 != m2 {
		t.Fatalf("another tenant's id is distinguishable from a missing one:\n %q\n %q", m1, m2)
	}
	// Storing under a's id does not reveal that a uses it: b gets its own key.
	bk, err := b.StoreDataKey(x, generate("dk", "a-1", ctxB))
	if err != nil {
		t.Fatalf("tenant b storing under an id tenant a also uses: %v", err)
	}
	_ = bk
	fa, err := a.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "a-1", Context: ctxA})
	if err != nil {
		t.Fatal(err)
	}
	fb, err := b.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "a-1", Context: ctxB})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(fa.GetPlaintext(), fb.GetPlaintext()) {
		t.Fatal("two tenants' keys under one id are the same key")
	}
	// Even the unconstrained relay must give the stored context exactly.
	for _, c := range []map[string]string{nil, {"tenant": "a", "extra": "x"}} {
		_, err = dataKeys(t, e, "relay").FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "a-1", Context: c})
		wantCode(t, err, codes.NotFound, fmt.Sprintf("relay fetching a-1 with context %v", c))
	}
	// Tenant b cannot delete a's key either: with a's context its grant
	// refuses, and with its own it deletes only its own key.
	_, err = b.DeleteDataKey(x, &custodyv1.DeleteDataKeyRequest{KeyName: "dk", Id: "a-1", Context: ctxA})
	wantCode(t, err, codes.PermissionDenied, "tenant b deleting a's id with a's context")
	if _, err := b.DeleteDataKey(x, &custodyv1.DeleteDataKeyRequest{KeyName: "dk", Id: "a-1", Context: ctxB}); err != nil {
		t.Fatalf("tenant b deleting its own a-1: %v", err)
	}
	if _, err := a.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "a-1", Context: ctxA}); err != nil {
		t.Fatalf("tenant a's own fetch after the refusals: %v", err)
	}
}

func TestListingIsPagedAndRestricted(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	relay := dataKeys(t, e, "relay")
	var want []string
	for i := range 25 {
		id := fmt.Sprintf("m-%02d", i)
		want = append(want, id)
		if _, err := relay.StoreDataKey(x, generate("dk", id, nil)); err != nil {
			t.Fatal(err)
		}
	}
	for _, who := range []string{"relay", "operator", "officer", "auditor"} {
		c := dataKeys(t, e, who)
		var got []string
		var pages []int
		tok := ""
		for {
			r, err := c.ListDataKeyIds(x, &custodyv1.ListDataKeyIdsRequest{KeyName: "dk", PageSize: 10, PageToken: tok})
			if err != nil {
				t.Fatalf("%s listing: %v", who, err)
			}
			got = append(got, r.GetIds()...)
			pages = append(pages, len(r.GetIds()))
			if tok = r.GetNextPageToken(); tok == "" {
				break
			}
		}
		if !slices.Equal(got, want) || !slices.Equal(pages, []int{10, 10, 5}) {
			t.Fatalf("%s listed %v in pages %v", who, got, pages)
		}
	}
	r, err := relay.ListDataKeyIds(x, &custodyv1.ListDataKeyIdsRequest{KeyName: "dk"})
	if err != nil || len(r.GetIds()) != 25 || r.GetNextPageToken() != "" {
		t.Fatalf("default page: %d ids, token %q, err %v", len(r.GetIds()), r.GetNextPageToken(), err)
	}

	// Restricted: a relay limited to one tenant's context, a relay without
	// unwrap on the key, and an identity without a role are refused.
	_, err = dataKeys(t, e, "tenant-a").ListDataKeyIds(x, &custodyv1.ListDataKeyIdsRequest{KeyName: "dk"})
	wantCode(t, err, codes.PermissionDenied, "context-limited relay listing")
	_, err = relay.ListDataKeyIds(x, &custodyv1.ListDataKeyIdsRequest{KeyName: "secret"})
	wantCode(t, err, codes.PermissionDenied, "relay listing an ungranted key")
	_, err = dataKeys(t, e, "stranger").ListDataKeyIds(x, &custodyv1.ListDataKeyIdsRequest{KeyName: "dk"})
	wantCode(t, err, codes.PermissionDenied, "stranger listing")
	_, err = dataKeys(t, e, "operator").ListDataKeyIds(x, &custodyv1.ListDataKeyIdsRequest{KeyName: "no-such-key"})
	wantCode(t, err, codes.NotFound, "operator listing an unknown key")

	// Bad pages.
	_, err = relay.ListDataKeyIds(x, &custodyv1.ListDataKeyIdsRequest{KeyName: "dk", PageSize: 1001})
	wantCode(t, err, codes.InvalidArgument, "page_size 1001")
	_, err = relay.ListDataKeyIds(x, &custodyv1.ListDataKeyIdsRequest{KeyName: "dk", PageSize: -1})
	wantCode(t, err, codes.InvalidArgument, "negative page_size")
	_, err = relay.ListDataKeyIds(x, &custodyv1.ListDataKeyIdsRequest{KeyName: "dk", PageToken: "!!"})
	wantCode(t, err, codes.InvalidArgument, "forged page_token")
}

func TestDeleteForgetsTheKey(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	dk := dataKeys(t, e, "relay")
	c := map[string]string{"conversation": "7"}
	if _, err := dk.StoreDataKey(x, generate("dk", "gone", c)); err != nil {
		t.Fatal(err)
	}
	_, err := dk.DeleteDataKey(x, &custodyv1.DeleteDataKeyRequest{KeyName: "dk", Id: "gone"})
	wantCode(t, err, codes.NotFound, "delete with the wrong context")
	_, err = dataKeys(t, e, "operator").DeleteDataKey(x, &custodyv1.DeleteDataKeyRequest{KeyName: "dk", Id: "gone", Context: c})
	wantCode(t, err, codes.PermissionDenied, "operator deleting")
	if _, err := dk.DeleteDataKey(x, &custodyv1.DeleteDataKeyRequest{KeyName: "dk", Id: "gone", Context: c}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err = dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "gone", Context: c})
	wantCode(t, err, codes.NotFound, "fetch after delete")
	_, err = dk.DeleteDataKey(x, &custodyv1.DeleteDataKeyRequest{KeyName: "dk", Id: "gone", Context: c})
	wantCode(t, err, codes.NotFound, "second delete")
	if ids := allIDs(t, e, "dk"); len(ids) != 0 {
		t.Fatalf("ids after delete: %v", ids)
	}
	// The id is free again, for a new key.
	if _, err := dk.StoreDataKey(x, generate("dk", "gone", c)); err != nil {
		t.Fatalf("store again after delete: %v", err)
	}
}

func TestBadRequestsAreInvalidAndStoreNothing(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	dk := dataKeys(t, e, "relay")
	bad := map[string]string{
		"empty":     "",
		"too long":  strings.Repeat("a", 129),
		"slash":     "a/b",
		"space":     "a b",
		"non-ascii": "caf\u00e9",
		"nul":       "a\x00b",
		"dotdot":    "../x",
	}
	for what, id := range bad {
		_, err := dk.StoreDataKey(x, generate("dk", id, nil))
		wantCode(t, err, codes.InvalidArgument, "store with id "+what)
		_, err = dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: id})
		wantCode(t, err, codes.InvalidArgument, "fetch with id "+what)
		_, err = dk.DeleteDataKey(x, &custodyv1.DeleteDataKeyRequest{KeyName: "dk", Id: id})
		wantCode(t, err, codes.InvalidArgument, "delete with id "+what)
	}
	// The longest and every allowed character are fine.
	for _, id := range []string{strings.Repeat("z", 128), "AZaz09._:-"} {
		if _, err := dk.StoreDataKey(x, generate("dk", id, nil)); err != nil {
			t.Fatalf("store with valid id %q: %v", id, err)
		}
	}
	_, err := dk.StoreDataKey(x, &custodyv1.StoreDataKeyRequest{KeyName: "dk", Id: "nosource"})
	wantCode(t, err, codes.InvalidArgument, "no source")
	_, err = dk.StoreDataKey(x, &custodyv1.StoreDataKeyRequest{KeyName: "dk", Id: "false", Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: false}})
	wantCode(t, err, codes.InvalidArgument, "generate=false")
	_, err = dk.StoreDataKey(x, &custodyv1.StoreDataKeyRequest{KeyName: "", Id: "x", Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}})
	wantCode(t, err, codes.InvalidArgument, "no key name")
	_, err = dk.StoreDataKey(x, generate("dk", "bigctx", map[string]string{strings.Repeat("k", 5000): "v"}))
	wantCode(t, err, codes.InvalidArgument, "oversized context")

	if ids := allIDs(t, e, "dk"); !slices.Equal(ids, []string{"AZaz09._:-", strings.Repeat("z", 128)}) {
		t.Fatalf("stored ids after bad requests: %v", ids)
	}
}

// TestFetchIsBudgetedLikeUnwrap runs a dev vault whose relay has a budget
// of 3 on the key: a fetch spends like an unwrap, a fetch of an unknown id
// costs the same (ids cannot be probed for free), and refusals are audited.
func TestFetchIsBudgetedLikeUnwrap(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{Mutate: func(e *testenv.Env, c *config.Config) {
		c.Grants = append(c.Grants, config.GrantConfig{Identity: "dev-relay", Keys: []string{"dk"},
			Operations: []config.Operation{config.OpDataKey, config.OpUnwrap}, AllowPlaintext: true})
		c.Budgets = append(c.Budgets, config.BudgetConfig{Identity: "dev-relay", Key: "dk", Rate: 0.001, Burst: 4, Volume: 1000, Window: time.Hour})
	}})
	e.CreateKey(t, "dk", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	x := ctx(t)
	dk := dataKeys(t, e, "relay")
	if _, err := dk.StoreDataKey(x, generate("dk", "b1", nil)); err != nil { // spends 1 of 4
		t.Fatal(err)
	}
	fetch := &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "b1"}
	if _, err := dk.FetchDataKey(x, fetch); err != nil {
		t.Fatalf("fetch 1: %v", err)
	}
	_, err := dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "unknown"})
	wantCode(t, err, codes.NotFound, "fetch 2 (unknown id)")
	if _, err := dk.FetchDataKey(x, fetch); err != nil {
		t.Fatalf("fetch 3: %v", err)
	}
	_, err = dk.FetchDataKey(x, fetch)
	wantCode(t, err, codes.ResourceExhausted, "fetch 4 over the budget")
	_, err = dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "unknown"})
	wantCode(t, err, codes.ResourceExhausted, "probing ids over the budget")

	var exhausted int
	err = e.D.Audit.Read(x, audit.Filter{Method: "FetchDataKey"}, func(r audit.Record) error {
		if r.Outcome == audit.OutcomeDenied && r.Code == codes.ResourceExhausted.String() {
			exhausted++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if exhausted != 2 {
		t.Fatalf("%d audited budget refusals, want 2", exhausted)
	}
}
