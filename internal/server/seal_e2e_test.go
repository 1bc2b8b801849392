package server_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/testenv"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestPINFileProductionVaultSaysSoEverywhere: a production vault that
// keeps its PIN in pin_file (a site that accepts the risk) says so at
// start, in its seal status, in a metric and in the ceremony transcript,
// and cannot be rekeyed by quorum (there are no shares to replace).
func TestPINFileProductionVaultSaysSoEverywhere(t *testing.T) {
	logs := &syncBuf{}
	opts := daemonOpts()
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	e := testenv.Start(t, testenv.Settings{
		ExtraClients: []string{"relay2"},
		Mutate: func(e *testenv.Env, c *config.Config) {
			c.Identities = append(c.Identities, config.IdentityConfig{Name: "dev-relay2", Role: config.Role("relay"), URI: e.Cert["relay2"].Identity})
			c.Dev, c.Governance.TimeLock, c.Governance.ProposalTTL = false, time.Hour, 2*time.Hour
			c.Keys.DestroyWaitMin = 24 * time.Hour
		},
		Daemon: opts,
	})
	g := &govEnv{Env: e, officers: newOfficers(t, "alice", "bob", "carol"), relay: e.Cert["relay"].Identity, relay2: e.Cert["relay2"].Identity}
	if !strings.Contains(logs.String(), "the HSM PIN is read from pin_file on this host") {
		t.Fatalf("no warning at start:\n%s", logs)
	}
	st, err := custodyv1.NewSealServiceClient(g.Dial(t, "auditor")).GetSealStatus(ctx(t), &custodyv1.GetSealStatusRequest{})
	if err != nil || st.GetState() != custodyv1.SealState_SEAL_STATE_UNSEALED || st.GetPinSource() != "pin_file" {
		t.Fatalf("seal status: %v %v", st, err)
	}
	if v := metric(t, g, `custody_seal_pin_source{source="pin_file"}`); v != "1" {
		t.Fatalf("pin source metric %q", v)
	}
	if v := metric(t, g, `custody_seal_pin_source{source="officers"}`); v != "0" {
		t.Fatalf("officers pin source metric %q", v)
	}
	tr := g.ceremony(t, 100)
	var doc quorum.Transcript
	if err := json.Unmarshal(tr.GetJson(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Seal == nil || doc.Seal.PINSource != "pin_file" || len(doc.Seal.Shares) != 0 {
		t.Fatalf("transcript seal section %+v", doc.Seal)
	}
	if !strings.Contains(tr.GetText(), "read from pin_file on the vault's host") {
		t.Fatalf("transcript text does not say where the PIN is:\n%s", tr.GetText())
	}
	p := g.propose(t, quorum.RekeySeal{Reason: "try"}, time.Hour)
	g.pass(t, p)
	info := g.waitState(t, p.ID, custodyv1.ProposalState_PROPOSAL_FAILED)
	if !strings.Contains(info.GetResult(), "reads its PIN from pin_file") {
		t.Fatalf("rekey result %q", info.GetResult())
	}
}
