package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/client"
	"github.com/custodyhq/custody/examples/relay"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/testenv"
)

const (
	tenantKey = "acme-messages" // granted to the relay only for tenant=acme
	otherKey  = "payroll"       // exists; never granted to the relay
	maxBatch  = 5
)

func startCustody(t *testing.T) *testenv.Env {
	t.Helper()
	e := testenv.Start(t, testenv.Settings{Mutate: func(_ *testenv.Env, c *config.Config) {
		c.Keys.MaxBatch = maxBatch
		c.Grants = append(c.Grants, config.GrantConfig{
			Identity: "dev-relay", Keys: []string{tenantKey}, AllowPlaintext: true,
			Operations:   []config.Operation{config.OpDataKey, config.OpUnwrap},
			ContextMatch: map[string]string{"tenant": "acme"},
		})
	}})
	e.CreateKey(t, tenantKey, custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	e.CreateKey(t, otherKey, custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	return e
}

func dial(t *testing.T, e *testenv.Env, who string) *client.Client {
	t.Helper()
	cp := e.Cert[who]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Addr: e.Addr, CAFile: e.CAFile, CertFile: cp.CertFile, KeyFile: cp.KeyFile, ServerName: "localhost", Block: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func openRelay(t *testing.T, c *client.Client, key, tenant, db string) *relay.Relay {
	t.Helper()
	r, err := relay.Open(c, relay.Config{KeyName: key, Tenant: tenant, DBPath: db})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func countAudit(t *testing.T, e *testenv.Env, identity, method string) int {
	t.Helper()
	n := 0
	err := e.D.Audit.Read(context.Background(), audit.Filter{Identity: identity, Method: method}, func(audit.Record) error { n++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMessagesRoundTripEncryptedPerConversation(t *testing.T) {
	e := startCustody(t)
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "relay.db")
	r := openRelay(t, dial(t, e, "relay"), tenantKey, "acme", db)

	texts := map[string][]string{
		"alice-bob":   {"the eagle lands at noon", "bring the blue folder", "confirmed"},
		"carol-david": {"lunch on thursday?", "sure, 12:30"},
	}
	for conv, msgs := range texts {
		for i, m := range msgs {
			seq, err := r.Post(ctx, conv, "sender-"+conv[:1], m)
			if err != nil {
				t.Fatal(err)
			}
			if seq != uint64(i+1) {
				t.Fatalf("seq = %d, want %d", seq, i+1)
			}
		}
	}
	for conv, msgs := range texts {
		got, err := r.Read(ctx, conv, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(msgs) {
			t.Fatalf("%s: %d messages, want %d", conv, len(got), len(msgs))
		}
		for i, m := range got {
			if m.Text != msgs[i] || m.Seq != uint64(i+1) || m.Sender != "sender-"+conv[:1] {
				t.Fatalf("%s message %d = %+v", conv, i, m)
			}
		}
	}
	if got, _ := r.Read(ctx, "alice-bob", 2, 0); len(got) != 1 || got[0].Text != "confirmed" {
		t.Fatalf("read after 2: %+v", got)
	}
	// One data key per conversation: two GenerateDataKey calls for five messages.
	if n := countAudit(t, e, e.Cert["relay"].Identity, "GenerateDataKey"); n != 2 {
		t.Fatalf("%d GenerateDataKey calls for 2 conversations", n)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	// At rest the store has neither message text nor sender in clear.
	raw, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	for _, msgs := range texts {
		for _, m := range msgs {
			if bytes.Contains(raw, []byte(m)) {
				t.Fatalf("store holds %q in clear", m)
			}
		}
	}
	if bytes.Contains(raw, []byte("sender-a")) {
		t.Fatal("store holds a sender in clear")
	}
}

func TestRelayHTTPAPIPostsAndReads(t *testing.T) {
	e := startCustody(t)
	r := openRelay(t, dial(t, e, "relay"), tenantKey, "acme", filepath.Join(t.TempDir(), "relay.db"))
	srv := httptest.NewServer(r.Handler(nil))
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/conversations/c1/messages", "application/json", strings.NewReader(`{"sender":"alice","text":"hi bob"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"seq":1`) {
		t.Fatalf("post: %d %s", resp.StatusCode, body)
	}
	resp, err = http.Get(srv.URL + "/conversations/c1/messages")
	if err != nil {
		t.Fatal(err)
	}
	var msgs []relay.Message
	err = json.NewDecoder(resp.Body).Decode(&msgs)
	resp.Body.Close()
	if err != nil || len(msgs) != 1 || msgs[0].Text != "hi bob" || msgs[0].Sender != "alice" {
		t.Fatalf("get: %v %+v", err, msgs)
	}
	resp, err = http.Post(srv.URL+"/conversations/c1/messages", "application/json", strings.NewReader(`{"text":"no sender"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("post without sender: %d", resp.StatusCode)
	}
}

// TestCompromisedRelayCanOnlyUnwrapOneConversationAtATime plays an attacker
// who has taken the relay: its store, its client certificate and key. What
// it can do is what the relay may do anyway, one audited call at a time.
func TestCompromisedRelayCanOnlyUnwrapOneConversationAtATime(t *testing.T) {
	e := startCustody(t)
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "relay.db")
	r := openRelay(t, dial(t, e, "relay"), tenantKey, "acme", db)
	const convs = 4
	for i := range convs {
		for j := range 3 {
			if _, err := r.Post(ctx, fmt.Sprintf("conv-%d", i), "u", fmt.Sprintf("message %d/%d", i, j)); err != nil {
				t.Fatal(err)
			}
		}
	}
	r.Close()
	relayID := e.Cert["relay"].Identity

	// The attacker starts a fresh process on the stolen store and identity.
	// CAN: read the conversations, each costing one Unwrap that custodyd
	// authorises and audits under the relay's identity.
	c := dial(t, e, "relay")
	stolen := openRelay(t, c, tenantKey, "acme", db)
	before := countAudit(t, e, relayID, "Unwrap")
	for i := range convs {
		msgs, err := stolen.Read(ctx, fmt.Sprintf("conv-%d", i), 0, 0)
		if err != nil || len(msgs) != 3 {
			t.Fatalf("conv-%d: %v %d", i, err, len(msgs))
		}
	}
	if n := countAudit(t, e, relayID, "Unwrap") - before; n != convs {
		t.Fatalf("reading %d conversations cost %d audited Unwraps, want one each", convs, n)
	}

	// CANNOT: list or inspect the keys in custody.
	if _, err := c.Keys().ListKeys(ctx, &custodyv1.ListKeysRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("relay listing keys: %v", err)
	}
	if _, err := c.Keys().GetKey(ctx, &custodyv1.GetKeyRequest{Name: tenantKey}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("relay reading key metadata: %v", err)
	}
	// CANNOT: get the master key. No RPC returns it; the closest calls
	// are refused, and a data key is all any call yields.
	if _, err := c.Crypto().GetPublicKey(ctx, &custodyv1.GetPublicKeyRequest{KeyName: tenantKey}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("relay asking for key material of the master key: %v", err)
	}
	if _, err := c.Keys().CreateKey(ctx, &custodyv1.CreateKeyRequest{Name: "exfil", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("relay creating a key: %v", err)
	}
	// CANNOT: use a key it was not granted, or its key outside its tenant.
	if _, err := openRelay(t, c, otherKey, "acme", filepath.Join(t.TempDir(), "x.db")).Post(ctx, "c", "u", "x"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("relay using an ungranted key: %v", err)
	}
	if _, err := openRelay(t, c, tenantKey, "globex", filepath.Join(t.TempDir(), "y.db")).Post(ctx, "c", "u", "x"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("relay using its key for another tenant: %v", err)
	}
	// CANNOT: unwrap in bulk. A batch is capped, and each item counts as one
	// call against the relay's grant and audit.
	dk, err := c.Crypto().GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: tenantKey, Context: map[string]string{"tenant": "acme"}})
	if err != nil {
		t.Fatal(err)
	}
	items := make([]*custodyv1.UnwrapRequest, maxBatch+1)
	for i := range items {
		items[i] = &custodyv1.UnwrapRequest{KeyName: tenantKey, WrappedKey: dk.WrappedKey, Context: map[string]string{"tenant": "acme"}}
	}
	if _, err := c.Crypto().BatchUnwrap(ctx, &custodyv1.BatchUnwrapRequest{Items: items}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("batch of %d unwraps over the cap of %d: %v", len(items), maxBatch, err)
	}
	// And every refused attempt is on the record under the relay's identity.
	for _, m := range []string{"ListKeys", "GetKey", "GetPublicKey", "CreateKey", "BatchUnwrap"} {
		if countAudit(t, e, relayID, m) == 0 {
			t.Fatalf("refused %s is not in the audit log", m)
		}
	}
}

// TestCompromisedRelayIsStoppedByItsBudget: with a budget of 6 operations
// per day on its key, a relay that posts to 4 conversations (4 data keys)
// can open 2 of them from a cold start and is then refused with a budget
// error that says when to retry; nothing more comes out.
func TestCompromisedRelayIsStoppedByItsBudget(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{Mutate: func(_ *testenv.Env, c *config.Config) {
		c.Grants = append(c.Grants, config.GrantConfig{
			Identity: "dev-relay", Keys: []string{tenantKey}, AllowPlaintext: true,
			Operations: []config.Operation{config.OpDataKey, config.OpUnwrap}, ContextMatch: map[string]string{"tenant": "acme"},
		})
		c.Budgets = append(c.Budgets, config.BudgetConfig{Identity: "dev-relay", Key: tenantKey, Rate: 1000, Burst: 1000, Volume: 6, Window: 24 * time.Hour})
	}})
	e.CreateKey(t, tenantKey, custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "relay.db")
	r := openRelay(t, dial(t, e, "relay"), tenantKey, "acme", db)
	for i := range 4 {
		if _, err := r.Post(ctx, fmt.Sprintf("conv-%d", i), "u", "hello"); err != nil {
			t.Fatalf("post %d: %v", i, err)
		}
	}
	r.Close()
	stolen := openRelay(t, dial(t, e, "relay"), tenantKey, "acme", db)
	opened := 0
	var budgetErr *client.BudgetError
	for i := range 4 {
		_, err := stolen.Read(ctx, fmt.Sprintf("conv-%d", i), 0, 0)
		switch {
		case err == nil:
			opened++
		case errors.As(err, &budgetErr):
		default:
			t.Fatalf("conv-%d: %v", i, err)
		}
	}
	if opened != 2 || budgetErr == nil || status.Code(err2status(budgetErr)) != codes.ResourceExhausted || budgetErr.RetryAfter <= 0 {
		t.Fatalf("opened %d conversations with a budget of 6 (4 spent on posting); budget error %v", opened, budgetErr)
	}
}

func err2status(b *client.BudgetError) error { return b.Status.Err() }
