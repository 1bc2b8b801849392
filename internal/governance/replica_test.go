package governance

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/keys/hsmtoken"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/store/etcdtest"
	"github.com/custodyhq/custody/internal/store/storetest"
)

// replica is one custodyd's governance over a shared etcd store: its own
// etcd client, authenticated store, key registry and recorder; the HSM
// token (and its store MAC key) is the one the replicas share.
type replica struct {
	st   *store.AuthStore
	keys *keys.Registry
	gov  *Governance
	rec  *memRecorder
}

// cluster is n replicas on one real etcd member and one real SoftHSM
// token, each following the store as custodyd does.
type cluster struct {
	rs    []*replica
	privs map[string]ed25519.PrivateKey
	req   CeremonyRequest
}

var prefixN atomic.Int64

func newCluster(t *testing.T, n int, mod func(*Options)) *cluster {
	t.Helper()
	m, _ := hsmtest.Open(t)
	ec := etcdtest.Start(t, 1)
	prefix := fmt.Sprintf("/gov-test/%d/", prefixN.Add(1))
	sealer := storetest.NewHMACSealer(t)
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	c := &cluster{}
	for i := range n {
		raw, err := store.OpenEtcd(ctx, store.EtcdOptions{Endpoints: ec.Endpoints(), TLS: ec.ClientTLS(), Prefix: prefix, LeaseTTL: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
		st := storetest.Authenticated(t, raw, sealer)
		reg, err := keys.OpenRegistry(ctx, st, hsmtoken.Token{M: m}, keys.RegistryOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r := &replica{st: st, keys: reg, rec: &memRecorder{}}
		o := Options{Store: st, Keys: reg, Token: &markerToken{m: m}, Signer: signer, Recorder: r.rec, QuorumRequired: true,
			Identities: []policy.Identity{{ID: "relay-a", Roles: []policy.Role{policy.RoleRelay}}, {ID: "relay-b", Roles: []policy.Role{policy.RoleRelay}}},
			TimeLock:   time.Hour, Instance: fmt.Sprintf("replica-%d", i),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if mod != nil {
			mod(&o)
		}
		if r.gov, err = Open(ctx, o); err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() { defer wg.Done(); reg.Follow(ctx, nil) }()
		go func() { defer wg.Done(); r.gov.Follow(ctx, nil) }()
		c.rs = append(c.rs, r)
	}
	c.req, c.privs = ceremonyRequest(t, "k1", "k2")
	return c
}

// ceremony runs the key ceremony through replica 0 and waits until every
// replica is governed by it.
func (c *cluster) ceremony(t *testing.T) {
	t.Helper()
	if _, _, err := c.rs[0].gov.InitCeremony(context.Background(), operator, c.req); err != nil {
		t.Fatal(err)
	}
	c.eventually(t, "the ceremony never reached every replica", func(r *replica) bool { return r.gov.Snapshot().Ceremony() })
}

// eventually waits (up to a minute) until cond holds on every replica.
func (c *cluster) eventually(t *testing.T, what string, cond func(r *replica) bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(time.Minute)
	for {
		all := true
		for _, r := range c.rs {
			all = all && cond(r)
		}
		if all {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a minute: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// propose files pl through replica i.
func (c *cluster) propose(t *testing.T, i int, pl quorum.Payload) quorum.Proposal {
	t.Helper()
	p, err := quorum.NewProposal(pl, operator.Identity, time.Now(), 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p.Vault = c.rs[i].gov.VaultID()
	canon, _ := p.CanonicalBytes()
	if _, err := c.rs[i].gov.Propose(context.Background(), operator, canon); err != nil {
		t.Fatalf("propose %s through replica %d: %v", p.Kind, i, err)
	}
	return p
}

func (c *cluster) approve(i int, p quorum.Proposal, officer string) error {
	d, _ := p.Digest()
	sig, err := quorum.SignApproval(c.privs[officer], d)
	if err != nil {
		return err
	}
	_, err = c.rs[i].gov.Approve(context.Background(), officerActor, p.ID, officer, sig)
	return err
}

// executions counts the executions of proposal id on the record of every
// replica: "execute" intents, less those recorded as lost to another
// replica.
func (c *cluster) executions(id string) int {
	n := 0
	for _, r := range c.rs {
		r.rec.mu.Lock()
		for _, ev := range r.rec.evs {
			if ev.Action != "execute" || !strings.HasPrefix(ev.Detail, id+" ") {
				continue
			}
			switch {
			case ev.Outcome == Intent:
				n++
			case ev.Outcome == Done && ev.Err != nil:
				n--
			}
		}
		r.rec.mu.Unlock()
	}
	return n
}

// TestProposalApprovedThroughDifferentReplicasAtOnceExecutesOnce: three
// officers approve one rotate-key proposal at the same moment, each through
// another replica (M = 2, so two of them may each believe theirs completed
// it). The key must be rotated exactly once, with one execution on the
// record, and every replica must show it executed.
func TestProposalApprovedThroughDifferentReplicasAtOnceExecutesOnce(t *testing.T) {
	c := newCluster(t, 3, nil)
	c.ceremony(t)
	for round := range 3 {
		p := c.propose(t, round%3, quorum.RotateKey{Name: "k1"})
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i, o := range []string{"alice", "bob", "carol"} {
			wg.Go(func() { errs[i] = c.approve(i, p, o) })
		}
		wg.Wait()
		ok := 0
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, quorum.ErrExecuted):
				// Came in after the proposal executed elsewhere.
			default:
				t.Fatalf("round %d: approval through replica %d: %v", round, i, err)
			}
		}
		if ok < 2 {
			t.Fatalf("round %d: %d approvals accepted, want at least 2", round, ok)
		}
		if n := c.executions(p.ID); n != 1 {
			t.Fatalf("round %d: proposal executed %d times, want once", round, n)
		}
		c.eventually(t, "not every replica shows the proposal executed", func(r *replica) bool {
			v, err := r.gov.Proposal(p.ID)
			return err == nil && v.Status.State == quorum.StateExecuted && v.Result != "" && !strings.HasPrefix(v.Result, "executing")
		})
	}
	c.eventually(t, "the rotations never reached every replica's registry", func(r *replica) bool {
		e, err := r.keys.Get("k1")
		return err == nil && len(e.Key.Versions) == 4
	})
	e, _ := c.rs[2].keys.Get("k1")
	if len(e.Key.Versions) != 4 || e.Key.Primary != 4 {
		t.Fatalf("k1 after 3 rotations has versions %d, primary %d; want 4 and 4", len(e.Key.Versions), e.Key.Primary)
	}
}

// TestTimeLockMaturesOnceWhenEveryReplicaRunsScheduledWork: a widening
// proposal's time-lock ends while all three replicas run their scheduled
// work at once, without an election: the compare-and-swap alone makes it
// execute once. Then the same through the election: only the leader's
// fenced writes count, and a deposed leader's change nothing.
func TestTimeLockMaturesOnceWhenEveryReplicaRunsScheduledWork(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	c := newCluster(t, 3, func(o *Options) { o.Now = clock; o.TimeLock = time.Minute })
	c.ceremony(t)
	grant := policy.Grant{ID: "g2", Identity: "relay-b", Key: "k1", Operations: []policy.Op{policy.OpDecrypt}}
	p := c.propose(t, 0, quorum.AddGrant{Grant: grant})
	if err := c.approve(1, p, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := c.approve(2, p, "bob"); err != nil {
		t.Fatal(err)
	}
	c.eventually(t, "the time-lock never started everywhere", func(r *replica) bool {
		v, err := r.gov.Proposal(p.ID)
		return err == nil && v.Status.State == quorum.StateTimeLocked
	})
	now.Add(int64(2 * time.Minute))
	var wg sync.WaitGroup
	var executed atomic.Int64
	for _, r := range c.rs {
		wg.Go(func() {
			for range 3 {
				n, err := r.gov.ExecuteReady(context.Background())
				if err != nil {
					t.Errorf("execute ready: %v", err)
				}
				executed.Add(int64(n))
			}
		})
	}
	wg.Wait()
	if n := c.executions(p.ID); n != 1 || executed.Load() != 1 {
		t.Fatalf("the matured proposal executed %d times (%d reported), want once", n, executed.Load())
	}
	c.eventually(t, "the grant never reached every replica", func(r *replica) bool {
		_, err := r.gov.Snapshot().Authorize("relay-b", policy.RoleRelay, policy.OpDecrypt, "k1", nil)
		return err == nil
	})

	// Through the election: a leadership that has ended executes nothing.
	grant2 := policy.Grant{ID: "g3", Identity: "relay-b", Key: "k2", Operations: []policy.Op{policy.OpDecrypt}}
	p2 := c.propose(t, 1, quorum.AddGrant{Grant: grant2})
	if err := c.approve(0, p2, "carol"); err != nil {
		t.Fatal(err)
	}
	if err := c.approve(2, p2, "alice"); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(2 * time.Minute))
	el, ok := store.ElectorOf(c.rs[0].st)
	if !ok {
		t.Fatal("no elector on an etcd store")
	}
	lead, err := el.Campaign(context.Background(), "scheduler", "replica-0")
	if err != nil {
		t.Fatal(err)
	}
	if err := lead.Resign(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, err := c.rs[0].gov.ExecuteReadyVia(context.Background(), lead); n != 0 || !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("a deposed leader executed %d proposals (%v); want none and ErrNotLeader", n, err)
	}
	el1, _ := store.ElectorOf(c.rs[1].st)
	lead1, err := el1.Campaign(context.Background(), "scheduler", "replica-1")
	if err != nil {
		t.Fatal(err)
	}
	defer lead1.Resign(context.Background())
	if n, err := c.rs[1].gov.ExecuteReadyVia(context.Background(), lead1); n != 1 || err != nil {
		t.Fatalf("the leader executed %d proposals (%v), want 1", n, err)
	}
	if n := c.executions(p2.ID); n != 1 {
		t.Fatalf("executed %d times, want once", n)
	}
}

// TestGrantRevokedOrRelayFrozenThroughOneReplicaIsEnforcedByAll measures
// how long a revocation made through one replica, and a freeze that
// happened on one replica, take to be enforced by the others (the bound
// asserted is generous; the figure is logged).
func TestGrantRevokedOrRelayFrozenThroughOneReplicaIsEnforcedByAll(t *testing.T) {
	c := newCluster(t, 3, func(o *Options) { o.Freeze = policy.FreezeRule{Refusals: 3, Within: time.Hour} })
	c.req.Grants = append(c.req.Grants, policy.Grant{ID: "g-b", Identity: "relay-b", Key: "k2", Operations: []policy.Op{policy.OpDecrypt}})
	c.req.Budgets = append(c.req.Budgets, BudgetEntry{Identity: "relay-b", Key: "k2", Budget: policy.Budget{Rate: 1000, Burst: 1000, Volume: 2, Window: time.Hour}})
	c.ceremony(t)
	allowed := func(r *replica) bool {
		_, err := r.gov.Snapshot().Authorize("relay-a", policy.RoleRelay, policy.OpDecrypt, "k1", nil)
		return err == nil
	}
	c.eventually(t, "grant g1 not in force everywhere", allowed)
	p := c.propose(t, 0, quorum.RemoveGrant{GrantID: "g1"})
	if err := c.approve(0, p, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := c.approve(0, p, "bob"); err != nil {
		t.Fatal(err)
	}
	if allowed(c.rs[0]) {
		t.Fatal("the revoking replica still allows the revoked grant")
	}
	took := c.eventually(t, "a replica still allows the revoked grant", func(r *replica) bool { return !allowed(r) })
	t.Logf("grant revoked through replica 0 was enforced by all replicas %v after the approval returned", took)
	if took > 10*time.Second {
		t.Errorf("revocation took %v to reach every replica", took)
	}

	// relay-b spends its budget of 2 on replica 0 and is refused there
	// until the freeze rule (3 refusals) freezes it.
	for range 2 {
		if err := c.rs[0].gov.Spend("relay-b", "k2", 1); err != nil {
			t.Fatal(err)
		}
	}
	var frozeAt time.Time
	for i := 0; i < 10 && frozeAt.IsZero(); i++ {
		err := c.rs[0].gov.Spend("relay-b", "k2", 1)
		if errors.Is(err, policy.ErrFrozen) {
			frozeAt = time.Now()
		} else if err == nil {
			t.Fatal("an exhausted budget allowed a spend")
		}
	}
	if frozeAt.IsZero() {
		t.Fatal("never frozen")
	}
	took = c.eventually(t, "a replica does not know relay-b is frozen", func(r *replica) bool { return r.gov.Frozen("relay-b", "k2") })
	t.Logf("freeze on replica 0 was enforced by all replicas %v after the refusal that froze it", took)
	if took > 10*time.Second {
		t.Errorf("freeze took %v to reach every replica", took)
	}
	for i, r := range c.rs {
		if err := r.gov.Spend("relay-b", "k2", 1); !errors.Is(err, policy.ErrFrozen) {
			t.Errorf("replica %d: spend by a frozen relay: %v, want ErrFrozen", i, err)
		}
	}
}

// TestBudgetSpreadOverReplicasHoldsGlobally: a relay with a volume of N
// spends through three replicas at once. Together they allow at most N
// (the documented overshoot, one slice per replica, is the bound), and once
// refusals freeze it every replica refuses it.
func TestBudgetSpreadOverReplicasHoldsGlobally(t *testing.T) {
	const volume = 60
	c := newCluster(t, 3, func(o *Options) { o.Freeze = policy.FreezeRule{Refusals: 10, Within: time.Hour} })
	b := policy.Budget{Rate: 1000, Burst: 200, Volume: volume, Window: time.Hour}
	c.req.Budgets = []BudgetEntry{{Identity: "relay-a", Key: "k1", Budget: b}}
	c.ceremony(t)
	var ok atomic.Int64
	var wg sync.WaitGroup
	for i, r := range c.rs {
		for w := range 2 {
			wg.Go(func() {
				for range 4 * volume {
					err := r.gov.Spend("relay-a", "k1", 1)
					switch {
					case err == nil:
						ok.Add(1)
					case errors.Is(err, policy.ErrFrozen):
						return
					case errors.Is(err, policy.ErrVolumeExceeded), errors.Is(err, policy.ErrRateLimited):
					default:
						t.Errorf("replica %d worker %d: %v", i, w, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	overshoot := int64(3 * sliceSize(b))
	t.Logf("budget of %d over 3 replicas allowed %d spends (documented bound %d + %d)", volume, ok.Load(), volume, overshoot)
	if ok.Load() > volume+overshoot {
		t.Fatalf("3 replicas allowed %d spends of a budget of %d (bound %d)", ok.Load(), volume, volume+overshoot)
	}
	if ok.Load() < volume/2 {
		t.Fatalf("only %d of %d units were served", ok.Load(), volume)
	}
	c.eventually(t, "the relay is not frozen on every replica", func(r *replica) bool { return r.gov.Frozen("relay-a", "k1") })
	for i, r := range c.rs {
		if err := r.gov.Spend("relay-a", "k1", 1); !errors.Is(err, policy.ErrFrozen) {
			t.Errorf("replica %d after the freeze: %v, want ErrFrozen", i, err)
		}
	}
}
