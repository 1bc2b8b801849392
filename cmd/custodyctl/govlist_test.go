package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/testenv"
)

// governedVault is a real dev custodyd after a 2-of-2 ceremony run through
// the CLI: key relay-messages granted to the dev relay (datakey, unwrap,
// plaintext allowed) with a budget of volume 5 per day (refilling 0.01/s); a short time-lock
// and a freeze after 3 refusals within a minute.
type governedVault struct {
	e          *testenv.Env
	dir        string
	alice, bob string // officer key files
}

func startGovernedVault(t *testing.T) *governedVault {
	t.Helper()
	s := testenv.Settings{
		Mutate: func(_ *testenv.Env, c *config.Config) {
			c.Governance.TimeLock = time.Second
			c.Governance.ProposalTTL = 100 * time.Hour
			c.Governance.Freeze.Refusals, c.Governance.Freeze.Within = 3, time.Minute
		},
	}
	s.Daemon.GovernanceInterval = 50 * time.Millisecond
	e := testenv.Start(t, s)
	v := &governedVault{e: e, dir: t.TempDir()}
	v.alice, v.bob = filepath.Join(v.dir, "alice.key"), filepath.Join(v.dir, "bob.key")
	for _, k := range []string{v.alice, v.bob} {
		if inv := keygen(t, "--out", k); inv.code != exitOK {
			t.Fatal(inv)
		}
	}
	relay := e.Cert["relay"].Identity
	yaml := fmt.Sprintf(`threshold: 2
officers:
  - {name: alice, public_key: alice.key.pub}
  - {name: bob, public_key: bob.key.pub}
keys:
  - {name: relay-messages, purpose: encrypt}
grants:
  - id: g-relay-1
    identity: %s
    key: relay-messages
    operations: [datakey, unwrap]
    context_match: {tenant: acme}
    allow_plaintext: true
budgets:
  - {identity: %s, key: relay-messages, rate: 0.01, burst: 100, volume: 5, window: 24h}
  - {identity: "", key: relay-messages, rate: 1000, burst: 1000, volume: 100000, window: 24h}
`, relay, relay)
	cfg := filepath.Join(v.dir, "ceremony.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if inv := runCLI(t, nil, append(as(e, "operator"), "ceremony", "init", "--config", cfg, "--transcript-out", filepath.Join(v.dir, "transcript"))...); inv.code != exitOK {
		t.Fatalf("ceremony init: %+v", inv)
	}
	return v
}

// approveBoth approves a proposal as alice and bob.
func (v *governedVault) approveBoth(t *testing.T, id string) {
	t.Helper()
	for _, k := range []string{v.alice, v.bob} {
		if inv := runCLI(t, nil, append(as(v.e, "officer"), "proposal", "approve", id, "--officer-key", k, "--yes")...); inv.code != exitOK {
			t.Fatalf("approve %s: %+v", id, inv)
		}
	}
}

// propose creates a proposal as the operator and returns its id.
func (v *governedVault) propose(t *testing.T, args ...string) string {
	t.Helper()
	inv := runCLI(t, nil, append(append(as(v.e, "operator"), "--output", "json", "proposal", "create"), args...)...)
	if inv.code != exitOK {
		t.Fatalf("proposal create %v: %+v", args, inv)
	}
	var info struct{ ID string }
	if err := json.Unmarshal([]byte(inv.stdout), &info); err != nil || info.ID == "" {
		t.Fatalf("proposal create output %q: %v", inv.stdout, err)
	}
	return info.ID
}

// waitExecuted polls proposal show until the proposal has executed
// (bounded: 60 s, the time-lock is 1 s).
func (v *governedVault) waitExecuted(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		inv := runCLI(t, nil, append(as(v.e, "auditor"), "proposal", "show", id)...)
		if strings.Contains(inv.stdout, "state:      executed") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("proposal %s did not execute: %+v", id, inv)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestListCommandsShowWhatIsInForce(t *testing.T) {
	v := startGovernedVault(t)
	e := v.e
	relay := e.Cert["relay"].Identity

	// The relay spends its whole volume of 5, then hammers until frozen.
	for i := range 5 {
		if inv := runCLI(t, nil, append(as(e, "relay"), "crypto", "datakey", "--key", "relay-messages", "--context", "tenant=acme")...); inv.code != exitOK {
			t.Fatalf("datakey %d: %+v", i, inv)
		}
	}
	for range 3 {
		runCLI(t, nil, append(as(e, "relay"), "crypto", "datakey", "--key", "relay-messages", "--context", "tenant=acme")...)
	}

	// grant list: text and JSON, as the auditor.
	inv := runCLI(t, nil, append(as(e, "auditor"), "grant", "list")...)
	if inv.code != exitOK || !strings.Contains(inv.stdout, "g-relay-1") || !strings.Contains(inv.stdout, "datakey,unwrap") ||
		!strings.Contains(inv.stdout, "tenant=acme") || !strings.Contains(inv.stdout, "plaintext") {
		t.Fatalf("grant list: %+v", inv)
	}
	inv = runCLI(t, nil, append(as(e, "auditor"), "--output", "json", "grant", "list", "--key", "relay-messages")...)
	var grants struct {
		Grants []struct {
			ID             string `json:"id"`
			Identity       string `json:"identity"`
			AllowPlaintext bool   `json:"allow_plaintext"`
		} `json:"grants"`
	}
	if err := json.Unmarshal([]byte(inv.stdout), &grants); err != nil || len(grants.Grants) != 1 ||
		grants.Grants[0].ID != "g-relay-1" || grants.Grants[0].Identity != relay || !grants.Grants[0].AllowPlaintext {
		t.Fatalf("grant list --output json: %v %+v", err, inv)
	}
	if inv := runCLI(t, nil, append(as(e, "auditor"), "grant", "list", "--identity", "spiffe://nobody")...); inv.code != exitOK || !strings.Contains(inv.stdout, "no grants") {
		t.Fatalf("grant list for nobody: %+v", inv)
	}

	// budget list: current spend and the freeze.
	inv = runCLI(t, nil, append(as(e, "auditor"), "--output", "json", "budget", "list")...)
	var budgets struct {
		Budgets []struct {
			Identity   string  `json:"identity"`
			WindowUsed string  `json:"window_used"` // int64 is a JSON string in protojson
			Available  float64 `json:"available"`
			Frozen     bool    `json:"frozen"`
			WindowEnd  string  `json:"window_end"`
		} `json:"budgets"`
	}
	if err := json.Unmarshal([]byte(inv.stdout), &budgets); err != nil || len(budgets.Budgets) != 2 {
		t.Fatalf("budget list --output json: %v %+v", err, inv)
	}
	for _, b := range budgets.Budgets {
		if b.WindowUsed != "5" || b.WindowEnd == "" {
			t.Errorf("budget %q: used %s, window end %q; want 5 and a time", b.Identity, b.WindowUsed, b.WindowEnd)
		}
		if b.Frozen != (b.Identity == relay) {
			t.Errorf("budget %q: frozen %v", b.Identity, b.Frozen)
		}
		if b.Identity == relay && (b.Available < 95 || b.Available > 96) {
			t.Errorf("relay budget available %v, want 95 (burst 100, 5 spent, refilling at 0.01/s)", b.Available)
		}
	}
	inv = runCLI(t, nil, append(as(e, "auditor"), "budget", "list")...)
	if inv.code != exitOK || !strings.Contains(inv.stdout, "FROZEN") || !strings.Contains(inv.stdout, "* (shared)") ||
		!strings.Contains(inv.stdout, "24h") {
		t.Fatalf("budget list: %+v", inv)
	}

	// order list: empty, then an executed disclosure order.
	if inv := runCLI(t, nil, append(as(e, "auditor"), "order", "list")...); inv.code != exitOK || !strings.Contains(inv.stdout, "no disclosure orders") {
		t.Fatalf("order list before any order: %+v", inv)
	}
	id := v.propose(t, "disclosure-order", "relay-messages", "--case", "case-2026-17", "--context", "tenant=acme,conversation=c-9",
		"--recipient", relay, "--max-uses", "5", "--not-after", "720h")
	v.approveBoth(t, id)
	v.waitExecuted(t, id)
	inv = runCLI(t, nil, append(as(e, "auditor"), "order", "list")...)
	if inv.code != exitOK || !strings.Contains(inv.stdout, "case-2026-17") || !strings.Contains(inv.stdout, "0/5") ||
		!strings.Contains(inv.stdout, "conversation=c-9,tenant=acme") || !strings.Contains(inv.stdout, "in force") {
		t.Fatalf("order list: %+v", inv)
	}
	inv = runCLI(t, nil, append(as(e, "auditor"), "--output", "json", "order", "list", "--all")...)
	var orders struct {
		Orders []struct {
			CaseRef string `json:"case_ref"`
			MaxUses int    `json:"max_uses"`
		} `json:"orders"`
	}
	if err := json.Unmarshal([]byte(inv.stdout), &orders); err != nil || len(orders.Orders) != 1 || orders.Orders[0].CaseRef != "case-2026-17" || orders.Orders[0].MaxUses != 5 {
		t.Fatalf("order list --output json: %v %+v", err, inv)
	}

	// proposal list: one line per proposal, saying what it will do in words.
	v.propose(t, "set-budget", "relay-messages", "--identity", relay, "--rate", "10", "--burst", "20", "--volume", "50", "--window", "24h")
	inv = runCLI(t, nil, append(as(e, "auditor"), "proposal", "list")...)
	lines := strings.Split(strings.TrimSpace(inv.stdout), "\n")
	if inv.code != exitOK || len(lines) != 3 {
		t.Fatalf("proposal list: want a header and 2 lines: %+v", inv)
	}
	if !strings.Contains(inv.stdout, "set budget of identity "+relay+` on key "relay-messages": rate 10/s, burst 20, at most 50 per 24h`) ||
		!strings.Contains(inv.stdout, `disclosure order for case "case-2026-17"`) || strings.Contains(inv.stdout, "{") ||
		strings.Contains(inv.stdout, "86400000000000") {
		t.Fatalf("proposal list does not say in words what each proposal will do:\n%s", inv.stdout)
	}
}
