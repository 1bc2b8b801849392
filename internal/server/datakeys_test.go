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
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/server"
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
	kv, err := e.D.Store.Get(x, "dk/dk/c1")
	if err != nil {
		t.Fatalf("record not at dk/<key>/<id>: %v", err)
	}
	if bytes.Contains(kv.Value, f.GetPlaintext()) {
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

func TestAnotherTenantsContextIsRefused(t *testing.T) {
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
	// Tenant b asking with its own context for a's id: the stored context
	// differs, and the refusal is the same as for a context outside the grant.
	_, errStored := b.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "a-1", Context: ctxB})
	wantCode(t, errStored, codes.PermissionDenied, "tenant b fetching a's id with its own context")
	_, errGrant := b.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "a-1", Context: map[string]string{"tenant": "c"}})
	wantCode(t, errGrant, codes.PermissionDenied, "tenant b with a context outside its grant")
	if m1, m2 := status.Convert(errStored).Message(), status.Convert(errGrant).Message(); m1 != m2 {
		t.Fatalf("a stored-context mismatch is distinguishable from a grant mismatch:\n %q\n %q", m1, m2)
	}
	// Even the unconstrained relay must give the stored context exactly.
	for _, c := range []map[string]string{nil, {"tenant": "a", "extra": "x"}, ctxB} {
		_, err = dataKeys(t, e, "relay").FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "a-1", Context: c})
		wantCode(t, err, codes.PermissionDenied, fmt.Sprintf("relay fetching a-1 with context %v", c))
	}
	// Tenant b cannot delete a's key either.
	_, err = b.DeleteDataKey(x, &custodyv1.DeleteDataKeyRequest{KeyName: "dk", Id: "a-1", Context: ctxB})
	wantCode(t, err, codes.PermissionDenied, "tenant b deleting a's id")
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
	wantCode(t, err, codes.PermissionDenied, "delete with the wrong context")
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

// TestFetchIsBudgetedLikeUnwrap serves the DataKeyService from a second
// server built on the running custodyd's HSM, registry, store and audit log,
// with a policy.Limiter (testenv's daemon does not configure budgets yet).
func TestFetchIsBudgetedLikeUnwrap(t *testing.T) {
	e := dkEnv(t)
	x := ctx(t)
	if _, err := dataKeys(t, e, "relay").StoreDataKey(x, generate("dk", "b1", nil)); err != nil {
		t.Fatal(err)
	}
	pol, roles, err := daemon.PolicyFromConfig(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	lim, err := policy.NewLimiter(policy.FreezeRule{Refusals: 1000, Within: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	relayID := e.Cert["relay"].Identity
	if err := lim.SetBudget(relayID, "dk", policy.Budget{Rate: 0.001, Burst: 3, Volume: 1000, Window: time.Hour}, now); err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Options{HSM: e.D.HSM, Keys: e.D.Keys, Policy: pol, Roles: roles, Limiter: lim, Audit: e.D.Audit, Now: func() time.Time { return now }})
	tlsCfg, err := pki.ServerTLSConfig(e.Config.TLS.CertFile, e.Config.TLS.KeyFile, e.Config.TLS.ClientCAFile)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(append(srv.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsCfg)))...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	cl, err := pki.ClientTLSConfig(e.CAFile, e.Cert["relay"].CertFile, e.Cert["relay"].KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cl)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	dk := custodyv1.NewDataKeyServiceClient(conn)
	fetch := &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "b1"}

	// Without a store the service fails closed.
	_, err = dk.FetchDataKey(x, fetch)
	wantCode(t, err, codes.Unavailable, "fetch before SetDataKeyStore")
	srv.SetDataKeyStore(e.D.Store)

	// Burst 3: the refused call above spent nothing (it failed before
	// authorisation). A fetch of an unknown id costs like any other, so ids
	// cannot be probed for free.
	if _, err := dk.FetchDataKey(x, fetch); err != nil {
		t.Fatalf("fetch 1: %v", err)
	}
	_, err = dk.FetchDataKey(x, &custodyv1.FetchDataKeyRequest{KeyName: "dk", Id: "unknown"})
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
