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
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/devcluster"
	"github.com/custodyhq/custody/internal/store/etcdtest"
)

// buildCustodyd builds cmd/custodyd into a temporary directory.
func buildCustodyd(t *testing.T) string {
	t.Helper()
	root, err := etcdtest.Root()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "custodyd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/custodyd")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/custodyd: %v\n%s", err, out)
	}
	return bin
}

// TestClusterKeepsAnsweringWhenReplicaKilledAndEtcdMemberStopped runs three
// custodyd processes on a three-member etcd cluster and one SoftHSM token,
// and drives decrypts through all of them with the Go client. Mid-load one
// custodyd is SIGKILLed, later one etcd member is stopped. Every call must
// succeed with the right plaintext, and the killed replica must have served
// part of the load before it died.
func TestClusterKeepsAnsweringWhenReplicaKilledAndEtcdMemberStopped(t *testing.T) {
	t.Setenv("SOFTHSM2_CONF", "") // PrepareDev sets it for the replicas; restored after
	bin := buildCustodyd(t)
	ctx := t.Context()
	c, err := devcluster.Start(ctx, devcluster.Options{
		Dir: filepath.Join(t.TempDir(), "cluster"), Custodyd: bin, Etcd: etcdtest.Binary(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
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
		enc, err := cl.Crypto().Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: daemon.DevKey, Plaintext: []byte(msgs[i])})
		if err != nil {
			t.Fatalf("encrypt: %v", err)
		}
		cts[i] = enc.Ciphertext
	}

	const workers, perWorker = 6, 200
	const total = workers * perWorker
	var done atomic.Int64
	var killOnce, stopOnce sync.Once
	var servedByKilled float64
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
				resp, err := cl.Crypto().Decrypt(cctx, &custodyv1.DecryptRequest{KeyName: daemon.DevKey, Ciphertext: cts[j]})
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
						servedByKilled = decrypts(t, c.Replicas[1])
						c.Replicas[1].Kill()
					})
				case 2 * total / 3:
					stopOnce.Do(func() { c.Etcd.Members[0].Stop() })
				}
			}
		})
	}
	wg.Wait()
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
