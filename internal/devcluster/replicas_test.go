package devcluster_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/devcluster"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/store/etcdtest"
)

var (
	custodydOnce sync.Mutex
	custodydBin  string
	binDir       string // removed after the package's tests
)

func TestMain(m *testing.M) {
	var err error
	if binDir, err = os.MkdirTemp("", "devcluster-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// custodyd builds cmd/custodyd once for the package's tests.
func custodyd(t *testing.T) string {
	t.Helper()
	custodydOnce.Lock()
	defer custodydOnce.Unlock()
	if custodydBin == "" {
		custodydBin = buildCustodyd(t, binDir)
	}
	return custodydBin
}

// govExtra is the governance the cluster tests run with: a time-lock short
// enough to wait out, and a freeze after 5 refusals in a minute.
const govExtra = "governance:\n  time_lock: 4s\n  proposal_ttl: 1h\n  freeze: {refusals: 5, within: 1m}\n"

// startCluster starts 3 etcd members and 3 custodyd replicas.
func startCluster(t *testing.T, extra string) *devcluster.Cluster {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", "") // PrepareDev sets it for the replicas; restored after
	bin := custodyd(t)
	c, err := devcluster.Start(t.Context(), devcluster.Options{
		Dir: filepath.Join(t.TempDir(), "cluster"), Custodyd: bin, Etcd: etcdtest.Binary(t), Extra: extra,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range c.Replicas {
				t.Logf("log of %s:\n%s", r.ID(), devcluster.Tail(r.LogFile, 40))
			}
		}
	})
	return c
}

var (
	connsMu sync.Mutex
	conns   = map[string]*grpc.ClientConn{}
)

// dial returns a connection to replica i as role (one per replica, role
// and cluster, closed when the test ends).
func dial(t *testing.T, c *devcluster.Cluster, i int, role string) *grpc.ClientConn {
	t.Helper()
	key := c.Dir + "|" + strconv.Itoa(i) + "|" + role
	connsMu.Lock()
	defer connsMu.Unlock()
	if conn, ok := conns[key]; ok {
		return conn
	}
	cl := c.Setup.PKI.Clients[role]
	tc, err := pki.ClientTLSConfig(c.Setup.PKI.CAFile, cl.CertFile, cl.KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.Replicas[i].GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	conns[key] = conn
	t.Cleanup(func() {
		connsMu.Lock()
		delete(conns, key)
		connsMu.Unlock()
		conn.Close()
	})
	return conn
}

type officer struct {
	name string
	priv ed25519.PrivateKey
}

// governed is a cluster after its key ceremony: keys "msgs" and "spare",
// the relay granted both, M = 2 of alice, bob and carol.
type governed struct {
	c        *devcluster.Cluster
	officers []officer
	relay    string
}

func ceremony(t *testing.T, c *devcluster.Cluster, msgsVolume int64) *governed {
	t.Helper()
	g := &governed{c: c, relay: c.Setup.PKI.Clients["relay"].Identity}
	req := &custodyv1.InitCeremonyRequest{Threshold: 2,
		Keys: []*custodyv1.CeremonyKey{{Name: "msgs", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM}, {Name: "spare", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM}},
		Grants: []*custodyv1.Grant{
			{Id: "relay-msgs", Identity: g.relay, Key: "msgs", Operations: []string{"encrypt", "decrypt"}, AllowPlaintext: true},
			{Id: "relay-spare", Identity: g.relay, Key: "spare", Operations: []string{"encrypt", "decrypt"}, AllowPlaintext: true},
		},
		Budgets: []*custodyv1.Budget{
			{Identity: g.relay, Key: "msgs", Rate: 100000, Burst: 10000, Volume: msgsVolume, Window: durationpb.New(time.Hour)},
			{Identity: g.relay, Key: "spare", Rate: 100000, Burst: 10000, Volume: 1 << 30, Window: durationpb.New(time.Hour)},
		},
	}
	for _, n := range []string{"alice", "bob", "carol"} {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKIXPublicKey(pub)
		req.Officers = append(req.Officers, &custodyv1.Officer{Name: n, PublicKeyDer: der})
		g.officers = append(g.officers, officer{name: n, priv: priv})
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := custodyv1.NewGovernanceServiceClient(dial(t, c, 0, "operator")).InitCeremony(ctx, req); err != nil {
		t.Fatalf("ceremony through replica 0: %v", err)
	}
	// The keys were made through replica 0; every replica serves them.
	for i := range c.Replicas {
		eventually(t, time.Minute, fmt.Sprintf("replica %d never served the ceremony's keys", i), func() bool {
			_, err := crypto(t, c, i).Encrypt(t.Context(), &custodyv1.EncryptRequest{KeyName: "spare", Plaintext: []byte("x")})
			return err == nil
		})
	}
	return g
}

func crypto(t *testing.T, c *devcluster.Cluster, i int) custodyv1.CryptoServiceClient {
	return custodyv1.NewCryptoServiceClient(dial(t, c, i, "relay"))
}

func gov(t *testing.T, c *devcluster.Cluster, i int, role string) custodyv1.GovernanceServiceClient {
	return custodyv1.NewGovernanceServiceClient(dial(t, c, i, role))
}

// propose files pl through replica i as the operator.
func (g *governed) propose(t *testing.T, i int, pl quorum.Payload) quorum.Proposal {
	t.Helper()
	p, err := quorum.NewProposal(pl, g.c.Setup.PKI.Clients["operator"].Identity, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	st, err := custodyv1.NewStatusServiceClient(dial(t, g.c, i, "operator")).GetStatus(t.Context(), &custodyv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	p.Vault = st.GetVaultId()
	canon, _ := p.CanonicalBytes()
	if _, err := gov(t, g.c, i, "operator").Propose(t.Context(), &custodyv1.ProposeRequest{CanonicalProposal: canon}); err != nil {
		t.Fatalf("propose %s through replica %d: %v", p.Kind, i, err)
	}
	return p
}

// approve approves p as officer o through replica i.
func (g *governed) approve(t *testing.T, i, o int, p quorum.Proposal) (*custodyv1.ProposalInfo, error) {
	d, err := p.Digest()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := quorum.SignApproval(g.officers[o].priv, d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	return gov(t, g.c, i, "officer").Approve(ctx, &custodyv1.ApproveRequest{Id: p.ID, Officer: g.officers[o].name, Signature: sig})
}

// metric reads one sample of a replica's /metrics ("" labels: unlabelled).
func metric(t *testing.T, r *devcluster.Replica, name string) (float64, bool) {
	t.Helper()
	resp, err := http.Get("http://" + r.HTTPAddr + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}

// eventually polls cond every 10ms until it holds or limit passes.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("after %v: %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// executions counts the executions of proposal id on every replica's
// audit chain: "execute" intents, less those recorded as not carried out
// (lost to another replica, or by a leader whose leadership had ended).
func executions(t *testing.T, c *devcluster.Cluster, id string) int {
	t.Helper()
	n := 0
	for _, r := range c.Replicas {
		err := audit.ReadDir(t.Context(), r.AuditDir(), audit.Filter{}, func(rec audit.Record) error {
			if !strings.Contains(rec.Detail, "execute "+id+" ") {
				return nil
			}
			switch rec.Outcome {
			case audit.OutcomeIntent:
				n++
			case audit.OutcomeError:
				n--
			}
			return nil
		})
		if err != nil {
			t.Fatalf("read the audit chain of %s: %v", r.ID(), err)
		}
	}
	return n
}

// TestClusterGovernanceReachesEveryReplica: on three custodyd processes on a
// three-member etcd, a key made through one replica serves on the others
// without restart, a rotation executed through one is used by all, a
// grant revoked through one is refused by every replica (measured), and a
// relay's budget holds across all replicas together, then its freeze is
// enforced by every replica (measured).
func TestClusterGovernanceReachesEveryReplica(t *testing.T) {
	const volume = 45
	c := startCluster(t, govExtra)
	g := ceremony(t, c, volume)
	ctx := t.Context()

	// A rotation approved through replicas 1 and 2 is in force on 0.
	p := g.propose(t, 1, quorum.RotateKey{Name: "spare"})
	if _, err := g.approve(t, 1, 0, p); err != nil {
		t.Fatal(err)
	}
	if _, err := g.approve(t, 2, 1, p); err != nil {
		t.Fatal(err)
	}
	for i := range c.Replicas {
		eventually(t, 30*time.Second, fmt.Sprintf("replica %d never encrypted with the rotated version", i), func() bool {
			resp, err := crypto(t, c, i).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "spare", Plaintext: []byte("v2")})
			return err == nil && resp.GetKeyVersion() == 2
		})
	}

	// Revocation of relay-spare through replica 2, measured on 0 and 1.
	ct, err := crypto(t, c, 0).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "spare", Plaintext: []byte("before")})
	if err != nil {
		t.Fatal(err)
	}
	rp := g.propose(t, 2, quorum.RemoveGrant{GrantID: "relay-spare"})
	if _, err := g.approve(t, 2, 0, rp); err != nil {
		t.Fatal(err)
	}
	if _, err := g.approve(t, 2, 2, rp); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1} {
		took := eventually(t, 30*time.Second, fmt.Sprintf("replica %d still decrypts with the revoked grant", i), func() bool {
			_, err := crypto(t, c, i).Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: "spare", Ciphertext: ct.GetCiphertext()})
			return status.Code(err) == codes.PermissionDenied
		})
		t.Logf("grant revoked through replica 2 refused by replica %d within %v of the approval (polled every 10ms)", i, took)
	}

	// The budget of msgs is spent through all three replicas at once.
	var mu sync.Mutex
	served, firstFrozen := 0, -1
	var wg sync.WaitGroup
	for i := range c.Replicas {
		cl := crypto(t, c, i)
		wg.Go(func() {
			for range 4 * volume {
				_, err := cl.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
				mu.Lock()
				switch {
				case err == nil:
					served++
				case status.Code(err) == codes.ResourceExhausted && strings.Contains(err.Error(), "frozen"):
					if firstFrozen < 0 {
						firstFrozen = i
					}
					mu.Unlock()
					return
				case status.Code(err) == codes.ResourceExhausted:
				default:
					t.Errorf("replica %d: %v", i, err)
					mu.Unlock()
					return
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	// Slices of a budget this size are 2 units: the documented bound is
	// the budget plus one slice per replica.
	t.Logf("a budget of %d spent through 3 replicas served %d requests (documented bound %d)", volume, served, volume+3*2)
	if served > volume+3*2 || served < volume/2 {
		t.Fatalf("a budget of %d served %d requests through 3 replicas", volume, served)
	}
	if firstFrozen < 0 {
		t.Fatal("the relay was never frozen")
	}
	for i, r := range c.Replicas {
		took := eventually(t, 30*time.Second, fmt.Sprintf("replica %d does not know the relay is frozen", i), func() bool {
			v, ok := metric(t, r, "custody_budget_frozen")
			return ok && v == 1
		})
		_, err := crypto(t, c, i).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "frozen") {
			t.Errorf("replica %d after the freeze: %v, want RESOURCE_EXHAUSTED frozen", i, err)
		}
		t.Logf("freeze (first reported by replica %d) known to replica %d %v after the load ended", firstFrozen, i, took)
	}
}

// TestClusterLeaderHandsOverScheduledWorkWhenKilled: a widening proposal
// waits out its time-lock; the replica running scheduled work is SIGKILLed
// before it ends. Another replica takes over and executes it, once.
func TestClusterLeaderHandsOverScheduledWorkWhenKilled(t *testing.T) {
	c := startCluster(t, govExtra)
	g := ceremony(t, c, 1000)
	leader := -1
	eventually(t, time.Minute, "no replica leads scheduled work", func() bool {
		for i, r := range c.Replicas {
			if v, ok := metric(t, r, "custody_scheduler_leader"); ok && v == 1 {
				leader = i
				return true
			}
		}
		return false
	})
	others := []int{}
	for i := range c.Replicas {
		if i != leader {
			others = append(others, i)
		}
	}
	grant := quorum.AddGrant{Grant: policyGrant("relay-late", g.relay, "msgs")}
	p := g.propose(t, others[0], grant)
	if _, err := g.approve(t, others[0], 0, p); err != nil {
		t.Fatal(err)
	}
	info, err := g.approve(t, others[1], 1, p)
	if err != nil {
		t.Fatal(err)
	}
	if info.GetState() != custodyv1.ProposalState_PROPOSAL_TIME_LOCKED {
		t.Fatalf("a widening proposal is %v, want time-locked", info.GetState())
	}
	c.Replicas[leader].Kill()
	t.Logf("killed replica %d, the leader, with the time-lock running", leader)
	for _, i := range others {
		eventually(t, time.Minute, fmt.Sprintf("replica %d never showed the proposal executed", i), func() bool {
			info, err := gov(t, c, i, "auditor").GetProposal(t.Context(), &custodyv1.GetProposalRequest{Id: p.ID})
			return err == nil && info.GetState() == custodyv1.ProposalState_PROPOSAL_EXECUTED && strings.HasPrefix(info.GetResult(), "executed")
		})
		grants, err := gov(t, c, i, "auditor").ListGrants(t.Context(), &custodyv1.ListGrantsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, gr := range grants.GetGrants() {
			found = found || gr.GetId() == "relay-late"
		}
		if !found {
			t.Fatalf("replica %d does not have the grant the new leader installed", i)
		}
	}
	newLeader := -1
	for _, i := range others {
		if v, ok := metric(t, c.Replicas[i], "custody_scheduler_leader"); ok && v == 1 {
			newLeader = i
		}
	}
	t.Logf("replica %d took over scheduled work", newLeader)
	if newLeader < 0 {
		t.Fatal("no surviving replica leads scheduled work")
	}
	if n := executions(t, c, p.ID); n != 1 {
		t.Fatalf("the matured proposal executed %d times on the record, want once", n)
	}
}

// publishedCheckpoints reads the replicas' published checkpoints from the
// cluster's etcd, as `custodyctl audit replicas` does.
func publishedCheckpoints(t *testing.T, c *devcluster.Cluster) []audit.Checkpoint {
	t.Helper()
	raw, err := store.OpenEtcd(t.Context(), store.EtcdOptions{Endpoints: c.Etcd.Endpoints(), TLS: c.Etcd.ClientTLS(), Prefix: c.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cps, err := daemon.PublishedCheckpoints(t.Context(), raw)
	if err != nil {
		t.Fatal(err)
	}
	return cps
}

// auditKey fetches the audit public key.
func auditKey(t *testing.T, c *devcluster.Cluster, i int) any {
	t.Helper()
	k, err := custodyv1.NewAuditServiceClient(dial(t, c, i, "auditor")).GetAuditPublicKey(t.Context(), &custodyv1.GetAuditPublicKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(k.GetDer())
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// policyGrant grants identity encrypt on key.
func policyGrant(id, identity, key string) policy.Grant {
	return policy.Grant{ID: id, Identity: identity, Key: key, Operations: []policy.Op{policy.OpEncrypt}}
}
