package server_test

// Red team, stale state after the performance work of 1541350 (budget
// reservations, batch items sharing one Snapshot, client-side coalescing,
// cached proposal bytes): a compromised relay with its own identity and
// budget, and one coerced officer, against a real custodyd (SoftHSM, bbolt,
// gRPC with mTLS on loopback, REST gateway). After a narrowing change
// executes through the real proposal + 2-of-3 approval path, no path may
// serve the relay even once more, and everything served is on the record
// under the identity and key it used.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/client"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/testenv"
)

// staleEnv is a governed vault whose relay has a budget large enough to be
// served from reservations of several units (a slice of 25 here), a REST
// gateway, and material for every key-using path.
type staleEnv struct {
	*govEnv
	ct      []byte // ciphertext under msgs v1, context staleCtx
	wrapped []byte // wrapped data key under msgs v1, context staleCtx
}

var staleCtx = map[string]string{"tenant": "acme"}

func startStale(t *testing.T, shared bool) *staleEnv {
	t.Helper()
	g := startGov(t, func(e *testenv.Env, c *config.Config) { c.GatewayListen = "127.0.0.1:0" })
	req := g.ceremonyRequest(1600)
	// The relay may also rewrap.
	req.Grants[0].Operations = append(req.Grants[0].Operations, "rewrap")
	if shared {
		req.Budgets = append(req.Budgets, &custodyv1.Budget{Identity: "", Key: "msgs", Rate: 10000, Burst: 1000, Volume: 100000, Window: durationpb.New(time.Hour)})
	}
	if _, err := g.gov(t, "operator").InitCeremony(ctx(t), req); err != nil {
		t.Fatalf("ceremony: %v", err)
	}
	s := &staleEnv{govEnv: g}
	// Material made by relay2 (its own budget), so that the relay's budget
	// is untouched until the attack.
	c2 := g.Crypto(t, "relay2")
	enc, err := c2.Encrypt(ctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("secret"), Context: staleCtx})
	if err != nil {
		t.Fatal(err)
	}
	dk, err := c2.GenerateDataKey(ctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "msgs", WithoutPlaintext: true, Context: staleCtx})
	if err != nil {
		t.Fatal(err)
	}
	s.ct, s.wrapped = enc.GetCiphertext(), dk.GetWrappedKey()
	return s
}

// execute files pl as the operator, has two officers approve it and waits
// until it has executed.
func (s *staleEnv) execute(t *testing.T, pl quorum.Payload) {
	t.Helper()
	p := s.propose(t, pl, time.Hour)
	s.pass(t, p)
	info := s.waitState(t, p.ID, custodyv1.ProposalState_PROPOSAL_EXECUTED)
	if !strings.HasPrefix(info.GetResult(), "executed") {
		t.Fatalf("proposal %s: %s", p.ID, info.GetResult())
	}
}

// warm has the relay spend one unit through a plain Decrypt, so that it
// holds a reservation of unused units.
func (s *staleEnv) warm(t *testing.T) {
	t.Helper()
	if _, err := s.Crypto(t, "relay").Decrypt(ctx(t), &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: s.ct, Context: staleCtx}); err != nil {
		t.Fatalf("warm-up decrypt: %v", err)
	}
}

// attempt is one way to use msgs as the relay; it returns how many
// operations were served (a batch counts its items).
type attempt struct {
	name string
	run  func(t *testing.T) (served, tried int)
}

func rtOne(err error) (int, int) {
	if err == nil {
		return 1, 1
	}
	return 0, 1
}

func rtItems[R interface{ GetError() *custodyv1.ItemError }](t *testing.T, rs []R, err error, n int) (int, int) {
	t.Helper()
	if err != nil {
		return 0, n
	}
	ok := 0
	for _, r := range rs {
		if r.GetError() == nil {
			ok++
		}
	}
	return ok, n
}

// paths are every key-using path of the relay on msgs: gRPC single and
// batch calls, the Go client's coalesced Decrypt, and the REST gateway.
func (s *staleEnv) paths(t *testing.T) []attempt {
	c := s.Crypto(t, "relay")
	dec := &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: s.ct, Context: staleCtx}
	unw := &custodyv1.UnwrapRequest{KeyName: "msgs", WrappedKey: s.wrapped, Context: staleCtx}
	cp := s.Cert["relay"]
	gc, err := client.Dial(context.Background(), client.Config{
		Addr: s.Addr, CAFile: s.CAFile, CertFile: cp.CertFile, KeyFile: cp.KeyFile,
		ServerName: "localhost", Timeout: 30 * time.Second,
		CoalesceDecrypts: true, CoalesceLinger: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gc.Close() })
	hc := s.HTTPClient(t, "relay")
	rest := func(path string, body any) (served, tried int) {
		b, _ := json.Marshal(body)
		resp, err := hc.Post("https://"+s.GatewayAddr+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		rs, batch := out["results"].([]any)
		if !batch {
			if resp.StatusCode == http.StatusOK {
				return 1, 1
			}
			return 0, 1
		}
		// A batch answers 200 with per-item errors.
		for _, r := range rs {
			if m, _ := r.(map[string]any); resp.StatusCode == http.StatusOK && m["error"] == nil {
				served++
			}
		}
		return served, len(rs)
	}
	ctB64 := base64.StdEncoding.EncodeToString(s.ct)
	wkB64 := base64.StdEncoding.EncodeToString(s.wrapped)
	return []attempt{
		{"Decrypt", func(t *testing.T) (int, int) { _, err := c.Decrypt(ctx(t), dec); return rtOne(err) }},
		{"BatchDecrypt", func(t *testing.T) (int, int) {
			r, err := c.BatchDecrypt(ctx(t), &custodyv1.BatchDecryptRequest{Items: []*custodyv1.DecryptRequest{dec, dec, dec, dec}})
			return rtItems(t, r.GetResults(), err, 4)
		}},
		{"Unwrap", func(t *testing.T) (int, int) { _, err := c.Unwrap(ctx(t), unw); return rtOne(err) }},
		{"BatchUnwrap", func(t *testing.T) (int, int) {
			r, err := c.BatchUnwrap(ctx(t), &custodyv1.BatchUnwrapRequest{Items: []*custodyv1.UnwrapRequest{unw, unw, unw, unw}})
			return rtItems(t, r.GetResults(), err, 4)
		}},
		{"GenerateDataKey", func(t *testing.T) (int, int) {
			_, err := c.GenerateDataKey(ctx(t), &custodyv1.GenerateDataKeyRequest{KeyName: "msgs", Context: staleCtx})
			return rtOne(err)
		}},
		{"Rewrap", func(t *testing.T) (int, int) {
			_, err := c.Rewrap(ctx(t), &custodyv1.RewrapRequest{KeyName: "msgs", WrappedKey: s.wrapped, Context: staleCtx})
			return rtOne(err)
		}},
		{"coalesced Decrypt", func(t *testing.T) (int, int) {
			var wg sync.WaitGroup
			var mu sync.Mutex
			ok := 0
			for range 8 {
				wg.Go(func() {
					if _, err := gc.Decrypt(context.Background(), "msgs", s.ct, staleCtx); err == nil {
						mu.Lock()
						ok++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			return ok, 8
		}},
		{"REST decrypt", func(t *testing.T) (int, int) {
			return (rest("/v1/crypto/decrypt", map[string]any{"key_name": "msgs", "ciphertext": ctB64, "context": staleCtx}))
		}},
		{"REST batch-decrypt", func(t *testing.T) (int, int) {
			it := map[string]any{"key_name": "msgs", "ciphertext": ctB64, "context": staleCtx}
			return (rest("/v1/crypto/batch-decrypt", map[string]any{"items": []any{it, it}}))
		}},
		{"REST unwrap", func(t *testing.T) (int, int) {
			return (rest("/v1/crypto/unwrap", map[string]any{"key_name": "msgs", "wrapped_key": wkB64, "context": staleCtx}))
		}},
	}
}

// servedAfter runs every path rounds times and returns what was served,
// by path.
func (s *staleEnv) servedAfter(t *testing.T, rounds int) (map[string]int, int) {
	t.Helper()
	got, total := map[string]int{}, 0
	ps := s.paths(t)
	for range rounds {
		for _, p := range ps {
			n, _ := p.run(t)
			got[p.name] += n
			total += n
		}
	}
	return got, total
}

// Sanity of the harness: before any change every path serves the relay.
func TestRedteamStaleHarnessServesEveryPathBeforeAChange(t *testing.T) {
	s := startStale(t, false)
	for _, p := range s.paths(t) {
		if n, tried := p.run(t); n != tried {
			t.Errorf("%s served %d of %d before any change", p.name, n, tried)
		}
	}
}

// A revoked grant (remove-grant, 2 of 3 officers) is refused on every path
// at once, although the relay holds reserved budget units.
func TestRedteamStaleRevokedGrantIsRefusedOnEveryPath(t *testing.T) {
	s := startStale(t, false)
	s.warm(t)
	s.execute(t, quorum.RemoveGrant{GrantID: "relay-msgs"})
	if got, total := s.servedAfter(t, 2); total != 0 {
		t.Fatalf("revoked relay served after the revocation executed: %v", got)
	}
	// And after a restart.
	s.Restart(t)
	if got, total := s.servedAfter(t, 1); total != 0 {
		t.Fatalf("revoked relay served after a restart: %v", got)
	}
}

// A cut of the relay's own budget to nothing more this window drops the
// units it had reserved under the old budget.
func TestRedteamStaleRelayBudgetCutTakesEffectAtOnce(t *testing.T) {
	s := startStale(t, false)
	s.warm(t) // spends 1 of a reserved slice of 25
	s.execute(t, quorum.SetBudget{Identity: s.relay, Key: "msgs", Budget: policy.Budget{Rate: 10000, Burst: 100, Volume: 1, Window: time.Hour}})
	if got, total := s.servedAfter(t, 2); total != 0 {
		t.Fatalf("relay served %d operations after its budget was cut to the volume already spent: %v", total, got)
	}
}

// A cut of the key's SHARED budget (set-budget with no identity) must bind
// the relay at once too. The relay already spent 25 units of the shared
// budget (its reservation took them); a shared volume of 1 allows nothing
// more this window.
func TestRedteamStaleSharedKeyBudgetCutTakesEffectAtOnce(t *testing.T) {
	s := startStale(t, true)
	s.warm(t)
	s.execute(t, quorum.SetBudget{Identity: "", Key: "msgs", Budget: policy.Budget{Rate: 10000, Burst: 1000, Volume: 1, Window: time.Hour}})
	if got, total := s.servedAfter(t, 2); total != 0 {
		t.Fatalf("HOLE: relay served %d operations after the key's shared budget was cut below what was already spent: %v", total, got)
	}
}

// A freeze (the relay breaches its budget) stops every path, including the
// units still reserved; a restart keeps it.
func TestRedteamStaleFreezeStopsReservedUnits(t *testing.T) {
	s := startStale(t, false)
	s.warm(t)
	// Freeze the relay with a budget cut and a sustained breach (100
	// refusals within a minute, the default rule).
	s.execute(t, quorum.SetBudget{Identity: s.relay, Key: "msgs", Budget: policy.Budget{Rate: 10000, Burst: 100, Volume: 1, Window: time.Hour}})
	c := s.Crypto(t, "relay")
	for range 120 {
		_, _ = c.Decrypt(ctx(t), &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: s.ct, Context: staleCtx})
	}
	if !s.D.Gov.Frozen(s.relay, "msgs") {
		t.Fatal("the relay did not freeze after a sustained breach")
	}
	if got, total := s.servedAfter(t, 1); total != 0 {
		t.Fatalf("frozen relay served: %v", got)
	}
	s.Restart(t)
	if got, total := s.servedAfter(t, 1); total != 0 {
		t.Fatalf("frozen relay served after a restart: %v", got)
	}
}

// A key version disabled by proposal (rotate, then disable v1) opens
// nothing made under it on any path.
func TestRedteamStaleDisabledVersionIsRefusedOnEveryPath(t *testing.T) {
	s := startStale(t, false)
	s.warm(t)
	s.execute(t, quorum.RotateKey{Name: "msgs"})
	s.execute(t, quorum.DisableVersion{Name: "msgs", Version: 1})
	got, _ := s.servedAfter(t, 1)
	for name, n := range got {
		switch name {
		case "GenerateDataKey": // uses the primary, v2
		default:
			if n != 0 {
				t.Errorf("%s opened material of the disabled version %d times", name, n)
			}
		}
	}
}

// Budgets are charged per batch item, also on the coalesced path, and every
// served item is on the record under the relay's identity and the key.
func TestRedteamStaleBudgetIsChargedPerItemOnEveryPathAndAudited(t *testing.T) {
	const volume = 40
	s := startStale(t, false)
	s.execute(t, quorum.SetBudget{Identity: s.relay, Key: "msgs", Budget: policy.Budget{Rate: 10000, Burst: 100, Volume: volume, Window: time.Hour}})
	before, _ := s.D.Audit.Head()
	served := 0
	for range 4 {
		_, total := s.servedAfter(t, 1)
		served += total
	}
	if served != volume {
		t.Fatalf("relay served %d operations on a volume of %d", served, volume)
	}
	ok := 0
	err := s.D.Audit.Read(ctx(t), audit.Filter{AfterSeq: before, Identity: s.relay}, func(r audit.Record) error {
		if r.Outcome != audit.OutcomeOK || strings.HasPrefix(r.Method, "Batch") && !strings.Contains(r.Method, "[") {
			return nil // refusals, and a batch's own record (its items have theirs)
		}
		if r.Key != "msgs" || r.KeyVersion != 1 || r.Role != string(policy.RoleRelay) {
			t.Errorf("served %s recorded with key %q v%d role %q", r.Method, r.Key, r.KeyVersion, r.Role)
		}
		ok++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok != volume {
		t.Fatalf("audit holds %d served relay operations on msgs v1, %d were served", ok, volume)
	}
}

// Coerced officer alone: one approval of a widening change (re-grant after
// a revocation) restores nothing.
func TestRedteamStaleOneOfficerCannotUndoARevocation(t *testing.T) {
	s := startStale(t, false)
	s.execute(t, quorum.RemoveGrant{GrantID: "relay-msgs"})
	p := s.propose(t, quorum.AddGrant{Grant: policy.Grant{ID: "relay-msgs-2", Identity: s.relay, Key: "msgs",
		Operations: []policy.Op{policy.OpDecrypt, policy.OpUnwrap, policy.OpDataKey}, AllowPlaintext: true}}, time.Hour)
	if _, err := s.approve(t, "officer", s.officers[2], p); err != nil {
		t.Fatal(err)
	}
	// A second approval by the same officer is refused.
	if _, err := s.approve(t, "officer", s.officers[2], p); err == nil {
		t.Fatal("the same officer approved twice")
	}
	time.Sleep(govTimeLock + time.Second)
	if got, total := s.servedAfter(t, 1); total != 0 {
		t.Fatalf("one officer's approval restored access: %v", got)
	}
	_, err := s.Crypto(t, "relay").Decrypt(ctx(t), &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: s.ct, Context: staleCtx})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("revoked relay after one officer's approval: %v, want PermissionDenied", err)
	}
}
