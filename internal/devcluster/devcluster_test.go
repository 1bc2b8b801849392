package devcluster_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/client"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/devcluster"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store/etcdtest"
)

// buildCustodyd builds cmd/custodyd into dir.
func buildCustodyd(t *testing.T, dir string) string {
	t.Helper()
	root, err := etcdtest.Root()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "custodyd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/custodyd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/custodyd: %v\n%s", err, out)
	}
	return bin
}

// TestClusterKeepsAnsweringWhenReplicaKilledAndEtcdMemberStopped runs three
// custodyd processes on a three-member etcd cluster and one SoftHSM token,
// governed by a key ceremony, and drives decrypts through all of them with
// the Go client. Mid-load one custodyd is SIGKILLed, a quorum proposal is
// approved through the two others, later one etcd member is stopped. Every
// call must succeed with the right plaintext (and the killed replica must
// have served part of the load before it died); the proposal must execute
// exactly once; every acknowledged decrypt must be on some replica's audit
// chain; and the three chains must verify together against the checkpoints
// the replicas published to etcd.
func TestClusterKeepsAnsweringWhenReplicaKilledAndEtcdMemberStopped(t *testing.T) {
	c := startCluster(t, govExtra)
	g := ceremony(t, c, 1<<30)
	ctx := t.Context()
	relay := c.Setup.PKI.Clients["relay"]
	cl, err := client.Dial(ctx, client.Config{
		Addrs: c.Addrs(), CAFile: c.Setup.PKI.CAFile, CertFile: relay.CertFile, KeyFile: relay.KeyFile,
		ServerName: "localhost", MaxAttempts: 6, Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	msgs := make([]string, 12)
	cts := make([][]byte, len(msgs))
	for i := range msgs {
		msgs[i] = fmt.Sprintf("message %d", i)
		enc, err := cl.Crypto().Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte(msgs[i])})
		if err != nil {
			t.Fatalf("encrypt: %v", err)
		}
		cts[i] = enc.Ciphertext
	}
	p := g.propose(t, 0, quorum.RotateKey{Name: "msgs"})

	const workers, perWorker = 6, 200
	const total = workers * perWorker
	var done atomic.Int64
	var killOnce, approveOnce, stopOnce sync.Once
	var servedByKilled float64
	var approvals sync.WaitGroup
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * time.Minute)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				if time.Now().After(deadline) {
					t.Errorf("worker %d: load did not finish in time (%d calls)", w, i)
					return
				}
				j := (w*7 + i) % len(msgs)
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				resp, err := cl.Crypto().Decrypt(cctx, &custodyv1.DecryptRequest{KeyName: "msgs", Ciphertext: cts[j]})
				cancel()
				if err != nil {
					t.Errorf("worker %d call %d: %v", w, i, err)
					return
				}
				if string(resp.Plaintext) != msgs[j] {
					t.Errorf("wrong answer %q for %q", resp.Plaintext, msgs[j])
					return
				}
				switch done.Add(1) {
				case total / 3:
					killOnce.Do(func() {
						// Its chain has a published checkpoint to be held
						// to before it dies.
						checkpoint(t, c, 1)
						servedByKilled = decrypts(t, c.Replicas[1])
						c.Replicas[1].Kill()
					})
				case total / 2:
					// Two officers approve at once, through the two
					// replicas left: the proposal executes on one.
					approveOnce.Do(func() {
						for _, a := range []struct{ replica, officer int }{{2, 0}, {0, 1}} {
							approvals.Go(func() {
								if _, err := g.approve(t, a.replica, a.officer, p); err != nil && !strings.Contains(err.Error(), "executed") {
									t.Errorf("approval through replica %d during the disturbance: %v", a.replica, err)
								}
							})
						}
					})
				case 2 * total / 3:
					stopOnce.Do(func() { c.Etcd.Members[0].Stop() })
				}
			}
		})
	}
	wg.Wait()
	approvals.Wait()
	if got := done.Load(); got != total {
		t.Fatalf("%d of %d calls answered", got, total)
	}
	if servedByKilled == 0 {
		t.Fatal("the killed replica had served no decrypt: calls were not spread over the replicas")
	}
	t.Logf("replica 1 served %v decrypts before SIGKILL; replicas 0 and 2 served %v and %v in all",
		servedByKilled, decrypts(t, c.Replicas[0]), decrypts(t, c.Replicas[2]))
	if c.Replicas[1].Running() {
		t.Fatal("replica 1 is still running")
	}
	for _, r := range []*devcluster.Replica{c.Replicas[0], c.Replicas[2]} {
		if err := r.WaitReady(ctx, 10*time.Second); err != nil {
			t.Errorf("surviving replica %d not ready with 2 of 3 etcd members: %v", r.Index, err)
		}
	}

	// The proposal approved during the disturbance executed once.
	for _, i := range []int{0, 2} {
		eventually(t, 30*time.Second, fmt.Sprintf("replica %d does not encrypt with the rotated key", i), func() bool {
			resp, err := crypto(t, c, i).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
			return err == nil && resp.GetKeyVersion() == 2
		})
	}

	// The audit: stop the survivors (a final checkpoint each), then every
	// chain verifies together against what the replicas published.
	pub := auditKey(t, c, 0)
	for _, i := range []int{0, 2} {
		c.Replicas[i].Stop()
	}
	if n := executions(t, c, p.ID); n != 1 {
		t.Fatalf("the proposal approved during the disturbance executed %d times on the record, want once", n)
	}
	published := publishedCheckpoints(t, c)
	if len(published) != 3 {
		t.Fatalf("%d replicas published checkpoints, want 3", len(published))
	}
	var dirs []string
	for _, r := range c.Replicas {
		dirs = append(dirs, r.AuditDir())
	}
	chains, err := audit.VerifyReplicas(dirs, pub, published)
	if err != nil {
		t.Fatalf("the replicas' chains do not verify together: %v", err)
	}
	recorded := 0
	for _, ch := range chains {
		if ch.Published == nil || !ch.Report.AnchorChecked {
			t.Errorf("chain of %s not checked against its published checkpoint: %+v", ch.Replica, ch)
		}
		err := audit.ReadDir(ctx, ch.Dir, audit.Filter{Method: "Decrypt", Identity: relay.Identity}, func(r audit.Record) error {
			if r.Outcome == audit.OutcomeOK && r.Key == "msgs" {
				recorded++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d decrypts acknowledged, %d on the replicas' audit chains", total, recorded)
	if recorded < total {
		t.Fatalf("%d decrypts were acknowledged but only %d are on the audit chains", total, recorded)
	}
}

// checkpoint has replica i sign a checkpoint of its head and waits until
// the replica has published it to etcd.
func checkpoint(t *testing.T, c *devcluster.Cluster, i int) {
	t.Helper()
	cp, err := custodyv1.NewAuditServiceClient(dial(t, c, i, "auditor")).GetLatestCheckpoint(t.Context(), &custodyv1.GetLatestCheckpointRequest{Current: true})
	if err != nil {
		t.Fatalf("checkpoint of replica %d: %v", i, err)
	}
	eventually(t, 30*time.Second, fmt.Sprintf("replica %d never published checkpoint %d", i, cp.GetSeq()), func() bool {
		for _, p := range publishedCheckpoints(t, c) {
			if p.InstanceID == c.Replicas[i].ID() && p.Seq >= cp.GetSeq() {
				return true
			}
		}
		return false
	})
}

// decrypts reads how many decrypts a replica answered OK from its /metrics.
func decrypts(t *testing.T, r *devcluster.Replica) float64 {
	t.Helper()
	resp, err := http.Get("http://" + r.HTTPAddr + "/metrics")
	if err != nil {
		t.Errorf("metrics of replica %d: %v", r.Index, err)
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, `custody_requests_total{code="OK",method="Decrypt"} `); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
