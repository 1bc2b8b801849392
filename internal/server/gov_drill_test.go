package server_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
)

// TestBulkExfiltrationDrill: a relay with a budget of N unwraps per window
// tries 50×N as fast as it can, with plain and batch calls over several
// connections. Exactly N succeed, every other attempt is RESOURCE_EXHAUSTED,
// the relay ends frozen (and stays frozen across a restart), and every
// attempt is in the audit log.
func TestBulkExfiltrationDrill(t *testing.T) {
	const n = 10
	g := startGov(t, nil)
	g.ceremony(t, n)
	// relay2 (its own budget) makes the wrapped data key the relay attacks.
	dk, err := g.Crypto(t, "relay2").GenerateDataKey(ctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "msgs", WithoutPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	item := &custodyv1.UnwrapRequest{KeyName: "msgs", WrappedKey: dk.GetWrappedKey()}

	var ok, exhausted, other atomic.Int64
	tally := func(err error) {
		switch code(err) {
		case codes.OK:
			ok.Add(1)
		case codes.ResourceExhausted:
			exhausted.Add(1)
		default:
			other.Add(1)
			t.Errorf("unexpected outcome %v", err)
		}
	}
	var wg sync.WaitGroup
	for w := range 4 {
		c := g.Crypto(t, "relay") // one connection per worker
		wg.Add(1)
		go func() {
			defer wg.Done()
			if w%2 == 0 { // 2 × 100 plain calls
				for range 100 {
					_, err := c.Unwrap(context.Background(), item)
					tally(err)
				}
				return
			}
			for range 15 { // 2 × 15 batches of 10
				items := make([]*custodyv1.UnwrapRequest, 10)
				for i := range items {
					items[i] = item
				}
				r, err := c.BatchUnwrap(context.Background(), &custodyv1.BatchUnwrapRequest{Items: items})
				if err != nil {
					t.Errorf("batch: %v", err)
					return
				}
				for _, res := range r.GetResults() {
					if e := res.GetError(); e != nil {
						tally(status.Error(codes.Code(e.GetCode()), e.GetMessage()))
					} else {
						tally(nil)
					}
				}
			}
		}()
	}
	wg.Wait()
	if ok.Load() != n || exhausted.Load() != 50*n-n || other.Load() != 0 {
		t.Fatalf("%d succeeded, %d exhausted, %d other; want %d, %d, 0", ok.Load(), exhausted.Load(), other.Load(), n, 50*n-n)
	}
	frozen := func() bool {
		r, err := g.gov(t, "auditor").ListBudgets(ctx(t), &custodyv1.ListBudgetsRequest{Key: "msgs"})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range r.GetBudgets() {
			if b.GetIdentity() == g.relay {
				return b.GetFrozen()
			}
		}
		t.Fatal("relay budget not listed")
		return false
	}
	if !frozen() {
		t.Fatal("relay not frozen after a sustained breach")
	}
	// Every attempt is on the record: 200 plain calls, 300 batch items.
	var plain, items int
	err = g.D.Audit.Read(ctx(t), audit.Filter{Identity: g.relay}, func(r audit.Record) error {
		switch {
		case r.Method == "Unwrap":
			plain++
		case strings.HasPrefix(r.Method, "BatchUnwrap["):
			items++
		}
		return nil
	})
	if err != nil || plain != 200 || items != 300 {
		t.Fatalf("audit holds %d plain and %d batch-item unwrap records (%v); want 200 and 300", plain, items, err)
	}
	// A restart neither refills the window nor lifts the freeze.
	g.Restart(t)
	if !frozen() {
		t.Fatal("freeze lost across a restart")
	}
	_, err = g.Crypto(t, "relay").Unwrap(ctx(t), item)
	wantCode(t, err, codes.ResourceExhausted, "frozen relay after restart")

	// Only a quorum lifts the freeze: an unfreeze proposal, approved by two
	// officers, executes after its time-lock. The window stays spent.
	p := g.propose(t, quorum.Unfreeze{Identity: g.relay, Key: "msgs"}, time.Hour)
	g.pass(t, p)
	g.waitState(t, p.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)
	if frozen() {
		t.Fatal("still frozen after the unfreeze proposal executed")
	}
	_, err = g.Crypto(t, "relay").Unwrap(ctx(t), item)
	wantCode(t, err, codes.ResourceExhausted, "unfrozen relay with its window spent")
}

// TestRogueOperatorDrill: the operator's certificate, the config and the
// bbolt file yield no decrypt without a quorum.
func TestRogueOperatorDrill(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	ct, err := g.Crypto(t, "relay").Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	dec := &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: ct.GetCiphertext()}

	// The operator's own certificate: no key operation, no approval, no
	// direct grant or key change.
	_, err = g.Crypto(t, "operator").Decrypt(ctx(t), dec)
	wantCode(t, err, codes.PermissionDenied, "operator decrypts")
	p := g.propose(t, quorum.AddGrant{Grant: policy.Grant{ID: "rogue", Identity: g.relay2, Key: "msgs", Operations: []policy.Op{policy.OpDecrypt}}}, time.Hour)
	_, err = g.approve(t, "operator", g.officers[0], p)
	wantCode(t, err, codes.PermissionDenied, "operator approves")
	_, err = g.Keys(t, "operator").CreateKey(ctx(t), &custodyv1.CreateKeyRequest{Name: "mine", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM})
	wantCode(t, err, codes.FailedPrecondition, "operator creates a key")

	// The config: a grant to relay2 added to the file does nothing after
	// the ceremony.
	g.Stop(t)
	g.Config.Grants = append(g.Config.Grants, config.GrantConfig{Identity: "dev-relay2", Keys: []string{"msgs"}, Operations: []config.Operation{config.OpDecrypt}, AllowPlaintext: true})
	g.Restart(t)
	_, err = g.Crypto(t, "relay2").Decrypt(ctx(t), dec)
	wantCode(t, err, codes.PermissionDenied, "relay2 decrypts through a config grant")

	// The bbolt file: editing the governance state while custodyd is
	// stopped makes it refuse to start.
	g.Stop(t)
	raw, err := store.OpenBolt(g.Config.Store.Path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := raw.Get(ctx(t), "gov/state")
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.Replace(kv.Value, []byte(`"volume":100,`), []byte(`"volume":999999999,`), 1)
	if bytes.Equal(edited, kv.Value) {
		t.Fatal("test did not find the budget to edit")
	}
	edited = bytes.Replace(edited, []byte(`"identity":"`+g.relay2+`","key":"msgs","operations":["encrypt","datakey"]`),
		[]byte(`"identity":"`+g.relay2+`","key":"msgs","operations":["encrypt","datakey","decrypt"]`), 1)
	if err := store.Put(ctx(t), raw, "gov/state", edited); err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	g.Config.Listen, g.Config.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
	d, err := daemon.Start(ctx(t), g.Config, daemon.Options{})
	if err == nil {
		d.Shutdown(ctx(t))
		t.Fatal("custodyd started on a store whose grants and budgets were edited")
	}
	if !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("start failed, but not for tampering: %v", err)
	}

	// Deleting the governance state (a record the MAC cannot vouch for,
	// since it is gone) to reopen the ceremony: the token remembers.
	raw, err = store.OpenBolt(g.Config.Store.Path, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"gov/state", "gov/limiter", "gov/transcript"} {
		if err := store.Delete(ctx(t), raw, k); err != nil && !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = daemon.Start(ctx(t), g.Config, daemon.Options{})
	if err == nil {
		d.Shutdown(ctx(t))
		t.Fatal("custodyd started after its governance state was deleted")
	}
	if !strings.Contains(err.Error(), "rolled back or had records deleted") {
		t.Fatalf("start failed, but not for the deleted state: %v", err)
	}
}

// TestDisclosureOrderDecryptsOnlyMatchingContextUntilCountOrExpiry.
func TestDisclosureOrderDecryptsOnlyMatchingContextUntilCountOrExpiry(t *testing.T) {
	g := startGov(t, nil)
	g.ceremony(t, 100)
	seal := func(c map[string]string) *custodyv1.DecryptRequest {
		r, err := g.Crypto(t, "relay").Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m"), Context: c})
		if err != nil {
			t.Fatal(err)
		}
		return &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: r.GetCiphertext(), Context: c}
	}
	target := map[string]string{"tenant": "acme", "user": "42"}
	match := seal(target)
	nomatch := seal(map[string]string{"tenant": "acme", "user": "43"})
	investigator := g.Crypto(t, "relay2")
	_, err := investigator.Decrypt(ctx(t), match)
	wantCode(t, err, codes.PermissionDenied, "decrypt before any order")

	order := func(ref string, uses int, notAfter time.Time) quorum.Proposal {
		p := g.propose(t, quorum.DisclosureOrder{Order: policy.Order{CaseRef: ref, Key: "msgs", ContextMatch: target,
			Recipient: g.relay2, MaxUses: uses, NotAfter: notAfter}}, time.Hour)
		g.pass(t, p)
		g.waitState(t, p.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)
		return p
	}
	order("CASE-1", 2, time.Now().Add(time.Hour))
	if _, err := investigator.Decrypt(ctx(t), match); err != nil {
		t.Fatalf("matching decrypt under the order: %v", err)
	}
	_, err = investigator.Decrypt(ctx(t), nomatch)
	wantCode(t, err, codes.PermissionDenied, "non-matching decrypt")
	if _, err := investigator.Decrypt(ctx(t), match); err != nil {
		t.Fatalf("second matching decrypt: %v", err)
	}
	_, err = investigator.Decrypt(ctx(t), match)
	wantCode(t, err, codes.PermissionDenied, "decrypt after the count is spent")
	var withCase int
	_ = g.D.Audit.Read(ctx(t), audit.Filter{Identity: g.relay2, Method: "Decrypt"}, func(r audit.Record) error {
		if r.CaseRef == "CASE-1" && r.Outcome == audit.OutcomeOK {
			withCase++
		}
		return nil
	})
	if withCase != 2 {
		t.Fatalf("%d successful decrypts audited with the case reference, want 2", withCase)
	}

	notAfter := time.Now().Add(govTimeLock + 3*time.Second)
	order("CASE-2", 10, notAfter)
	if _, err := investigator.Decrypt(ctx(t), match); err != nil {
		t.Fatalf("decrypt under the second order: %v", err)
	}
	time.Sleep(time.Until(notAfter) + 100*time.Millisecond)
	_, err = investigator.Decrypt(ctx(t), match)
	wantCode(t, err, codes.PermissionDenied, "decrypt after the order expired")

	// An empty or wildcard match is refused at validation.
	p, err := quorum.NewProposal(quorum.DisclosureOrder{Order: policy.Order{CaseRef: "BULK", Key: "msgs", ContextMatch: map[string]string{"tenant": "*"},
		Recipient: g.relay2, MaxUses: 1, NotAfter: time.Now().Add(time.Hour)}}, "op", time.Now(), time.Hour)
	p.Vault = g.D.Gov.VaultID()
	if err == nil {
		t.Fatalf("wildcard order %s accepted", p.ID)
	}
}
