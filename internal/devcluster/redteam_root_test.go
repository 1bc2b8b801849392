package devcluster_test

// Red-team tests: root on ONE vault host of a cluster (several custodyd
// replicas on one SoftHSM token and one etcd prefix). Root has that host's
// configuration, PIN file (dev), audit directory and etcd client
// credentials, and can stop and restart its custodyd, but holds no officer
// share. Every test asserts that the defence holds: a test that fails
// names a hole.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/devcluster"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
)

// rtEtcd is root's own etcd client, made from the credentials custodyd
// uses (the cluster's client certificate).
func rtEtcd(t *testing.T, c *devcluster.Cluster) *clientv3.Client {
	t.Helper()
	raw, err := store.OpenEtcd(t.Context(), store.EtcdOptions{Endpoints: c.Etcd.Endpoints(), TLS: c.Etcd.ClientTLS(), Prefix: c.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	return raw.Client()
}

// rtSnapshot is a copy of the vault's records and counter in etcd, as
// root takes it with etcdctl get --prefix (or from etcd's history).
type rtSnapshot map[string][]byte

func rtTake(t *testing.T, c *devcluster.Cluster) rtSnapshot {
	t.Helper()
	cli := rtEtcd(t, c)
	s := rtSnapshot{}
	for _, p := range []string{c.Prefix + "kv/", c.Prefix + "rev"} {
		resp, err := cli.Get(t.Context(), p, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			s[string(kv.Key)] = append([]byte(nil), kv.Value...)
		}
	}
	if len(s) == 0 {
		t.Fatal("the snapshot is empty")
	}
	return s
}

// rtRestore puts the whole snapshot back: every record written since is
// deleted, every record of the snapshot (anchor and counter included) put
// back byte for byte.
func rtRestore(t *testing.T, c *devcluster.Cluster, s rtSnapshot) {
	t.Helper()
	cli := rtEtcd(t, c)
	if _, err := cli.Delete(t.Context(), c.Prefix+"kv/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	var ops []clientv3.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := cli.Txn(t.Context()).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = nil
	}
	for k, v := range s {
		ops = append(ops, clientv3.OpPut(k, string(v)))
		if len(ops) == 100 {
			flush()
		}
	}
	flush()
}

// rtKeys lists the vault's record names (without the etcd prefix).
func rtKeys(t *testing.T, c *devcluster.Cluster, under string) []string {
	t.Helper()
	resp, err := rtEtcd(t, c).Get(t.Context(), c.Prefix+"kv/"+under, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), c.Prefix+"kv/"))
	}
	return out
}

// rtEditConfig rewrites a replica's configuration file (root owns it).
func rtEditConfig(t *testing.T, path string, edit func(string) string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := edit(string(b))
	if n == string(b) {
		t.Fatalf("editing %s changed nothing", path)
	}
	if err := os.WriteFile(path, []byte(n), 0o600); err != nil {
		t.Fatal(err)
	}
}

// rtRestart stops replica r (SIGTERM), lets edit change its configuration,
// starts it again and reports whether it became ready within limit (false:
// it refused to serve, or exited), with its log's tail.
func rtRestart(t *testing.T, r *devcluster.Replica, limit time.Duration, edit func(string) string) (bool, string) {
	t.Helper()
	r.Stop()
	if edit != nil {
		rtEditConfig(t, r.ConfigFile, edit)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	err := r.WaitReady(t.Context(), limit)
	if err != nil {
		r.Kill() // reset the harness's process handle (it may have exited)
		return false, err.Error()
	}
	return true, devcluster.Tail(r.LogFile, 10)
}

// rtRevoke revokes grant id through replica i with two officers' approvals
// and waits until every running replica refuses decrypt under key.
func (g *governed) rtRevoke(t *testing.T, i int, id, key string, ct []byte) {
	t.Helper()
	p := g.propose(t, i, quorum.RemoveGrant{GrantID: id})
	if _, err := g.approve(t, i, 0, p); err != nil {
		t.Fatal(err)
	}
	if _, err := g.approve(t, i, 1, p); err != nil {
		t.Fatal(err)
	}
	for j, r := range g.c.Replicas {
		if !r.Running() {
			continue
		}
		eventually(t, 30*time.Second, fmt.Sprintf("replica %d still decrypts with the revoked grant", j), func() bool {
			_, err := crypto(t, g.c, j).Decrypt(t.Context(), &custodyv1.DecryptRequest{KeyName: key, Ciphertext: ct})
			return status.Code(err) == codes.PermissionDenied
		})
	}
}

// rtNewDir makes an empty audit directory, as root would.
func rtNewDir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// rtReplicaLine is the replica_id line of a devcluster configuration.
func rtReplicaLine(r *devcluster.Replica) string { return "replica_id: " + r.ID() + "\n" }

// TestRedteamRootStoreRollbackNewAuditDir: root copies the vault's etcd
// records while the relay still holds a grant; officers revoke the grant;
// root stops its replica, puts the copy back into etcd (an older,
// authentic, HSM-sealed state: anchor, counter and every record), and
// starts its replica again.
//
//   - With its configured audit directory: refused (the directory's newest
//     checkpoint and the token's mark both record a newer store revision).
//   - With audit.dir pointed at a NEW, empty directory (and/or a new
//     replica_id): the mark on the token is kept per "host:auditDir", so the
//     new scope has none; the new directory has no checkpoint; nothing else
//     compares the store with anything. The defence must still refuse the
//     older store; today the replica serves it, and the revoked grant
//     decrypts again on it.
func TestRedteamRootStoreRollbackNewAuditDir(t *testing.T) {
	c := startCluster(t, govExtra)
	g := ceremony(t, c, 1<<30)
	ctx := t.Context()
	ct, err := crypto(t, c, 2).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "spare", Plaintext: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	snap := rtTake(t, c) // root's copy: relay-spare granted

	g.rtRevoke(t, 0, "relay-spare", "spare", ct.GetCiphertext())
	for i := range c.Replicas {
		checkpoint(t, c, i) // every replica's mark now records the newer store revision
	}
	time.Sleep(2 * time.Second) // the mark writer coalesces writes (1 s)
	root := c.Replicas[2]
	root.Stop()
	rtRestore(t, c, snap)

	// Control: the configured audit directory catches it.
	if ok, log := rtRestart(t, root, 20*time.Second, nil); ok {
		t.Errorf("HOLE: replica 2 served a store rolled back behind its own audit directory and mark:\n%s", log)
		root.Stop()
	} else {
		t.Logf("held: replica 2 with its own audit directory refused the rolled-back store:\n%s", lastLines(log, 3))
	}

	// Attack: a new, empty audit directory (the old one can then go).
	fresh := rtNewDir(t, filepath.Join(root.Dir, "audit-new"))
	ok, log := rtRestart(t, root, 30*time.Second, func(s string) string {
		return strings.Replace(s, strconv.Quote(root.AuditDir()), strconv.Quote(fresh), 1)
	})
	if !ok {
		t.Logf("held: replica 2 with a new audit directory refused the rolled-back store:\n%s", lastLines(log, 3))
		return
	}
	_, derr := crypto(t, c, 2).Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: "spare", Ciphertext: ct.GetCiphertext()})
	grants, _ := gov(t, c, 2, "auditor").ListGrants(ctx, &custodyv1.ListGrantsRequest{})
	var ids []string
	for _, gr := range grants.GetGrants() {
		ids = append(ids, gr.GetId())
	}
	t.Errorf("HOLE: with audit.dir pointed at a new empty directory, replica 2 started and serves an etcd state "+
		"restored from before a quorum revocation (grants %v; decrypt under the revoked grant: err=%v). "+
		"The token's mark is per host:auditDir, so the new scope has none, and no other check compares the store's "+
		"anchor revision with the newest revision any replica's mark recorded", ids, derr)
	// The replicas that kept running never take the older state.
	for _, i := range []int{0, 1} {
		_, err := crypto(t, c, i).Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: "spare", Ciphertext: ct.GetCiphertext()})
		if err == nil {
			t.Errorf("replica %d, running through the restore, decrypts under the revoked grant", i)
		} else {
			t.Logf("replica %d (running through the restore): %v", i, status.Code(err))
		}
	}
}

// TestRedteamRootDirectEtcdWrites: with custodyd's etcd credentials root
// replays an older version of the governance record (before a revocation
// and a freeze), deletes the budget spend records, and deletes the
// freeze-bearing state outright. The running replicas must keep refusing
// the revoked grant and the frozen relay, and a replica restarted on the
// tampered store, even with a new audit directory, must refuse to serve.
func TestRedteamRootDirectEtcdWrites(t *testing.T) {
	const volume = 12
	c := startCluster(t, govExtra)
	g := ceremony(t, c, volume)
	ctx := t.Context()
	cli := rtEtcd(t, c)
	ct, err := crypto(t, c, 0).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "spare", Plaintext: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	old := rtTake(t, c)
	stateKey := c.Prefix + "kv/gov/state"
	if old[stateKey] == nil {
		t.Fatalf("no %s record in etcd; records: %v", stateKey, rtKeys(t, c, ""))
	}
	g.rtRevoke(t, 1, "relay-spare", "spare", ct.GetCiphertext())
	// Spend msgs until frozen.
	frozen := false
	for range 10 * volume {
		_, err := crypto(t, c, 0).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
		if status.Code(err) == codes.ResourceExhausted && strings.Contains(err.Error(), "frozen") {
			frozen = true
			break
		}
	}
	if !frozen {
		t.Fatal("the relay was never frozen")
	}
	for i, r := range c.Replicas {
		eventually(t, 30*time.Second, fmt.Sprintf("replica %d does not know the relay is frozen", i), func() bool {
			v, ok := metric(t, r, "custody_budget_frozen")
			return ok && v == 1
		})
	}
	refused := func(what string) {
		t.Helper()
		for i := range c.Replicas {
			_, derr := crypto(t, c, i).Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: "spare", Ciphertext: ct.GetCiphertext()})
			_, eerr := crypto(t, c, i).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
			if derr == nil {
				t.Errorf("HOLE (%s): replica %d decrypts under the revoked grant", what, i)
			}
			if eerr == nil {
				t.Errorf("HOLE (%s): replica %d serves the frozen relay", what, i)
			}
			t.Logf("%s: replica %d: revoked grant %v, frozen relay %v", what, i, status.Code(derr), status.Code(eerr))
		}
	}

	// 1. An older version of gov/state put back.
	if _, err := cli.Put(ctx, stateKey, string(old[stateKey])); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	refused("older gov/state replayed")

	// 2. Every budget spend record deleted.
	budgets := rtKeys(t, c, "gov/budget/")
	if _, err := cli.Delete(ctx, c.Prefix+"kv/gov/budget/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	t.Logf("deleted %d budget records: %v", len(budgets), budgets)
	time.Sleep(time.Second)
	refused("budget records deleted")

	// 3. A restart on the tampered store, with a new audit directory.
	root := c.Replicas[2]
	fresh := rtNewDir(t, filepath.Join(root.Dir, "audit-new"))
	if ok, log := rtRestart(t, root, 20*time.Second, func(s string) string {
		return strings.Replace(s, strconv.Quote(root.AuditDir()), strconv.Quote(fresh), 1)
	}); ok {
		t.Errorf("HOLE: replica 2 restarted (new audit directory) on a store with a replayed record and deleted records:\n%s", log)
	} else {
		t.Logf("held: the restarted replica refused: %s", lastLines(log, 3))
	}
}

// rtProc is a custodyd root starts by hand (an extra replica).
type rtProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestRedteamRootExtraReplicaDoublesBudget: root starts a second custodyd on
// its host (a copy of its configuration with another audit directory,
// replica_id and ports) and spends a relay's budget through every replica,
// its extra one included. Budgets are global: the total served must stay
// within the budget plus one slice per replica.
func TestRedteamRootExtraReplicaDoublesBudget(t *testing.T) {
	const volume = 40
	c := startCluster(t, govExtra)
	ceremony(t, c, volume)
	ctx := t.Context()
	root := c.Replicas[2]
	b, err := os.ReadFile(root.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	dir := filepath.Join(c.Dir, "replica-extra")
	rtNewDir(t, filepath.Join(dir, "audit"))
	cfg := string(b)
	cfg = strings.Replace(cfg, "listen: "+root.GRPCAddr, "listen: "+grpcAddr, 1)
	cfg = strings.Replace(cfg, "http_listen: "+root.HTTPAddr, "http_listen: "+httpAddr, 1)
	cfg = strings.Replace(cfg, rtReplicaLine(root), "replica_id: replica-extra\n", 1)
	cfg = strings.Replace(cfg, strconv.Quote(root.AuditDir()), strconv.Quote(filepath.Join(dir, "audit")), 1)
	cfgFile := filepath.Join(dir, "custodyd.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &rtProc{log: filepath.Join(dir, "custodyd.log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(custodyd(t), "--config", cfgFile, "--log-level", "warn")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	ready := false
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && !ready; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + httpAddr + "/readyz"); err == nil {
			resp.Body.Close()
			ready = resp.StatusCode == http.StatusOK
		}
		select {
		case <-p.done:
			if tail := devcluster.Tail(p.log, 5); strings.Contains(tail, "invalid configuration") {
				t.Fatalf("the extra replica's configuration is wrong:\n%s", tail)
			} else {
				t.Logf("held: the extra replica refused to start:\n%s", tail)
			}
			return
		default:
		}
	}
	if !ready {
		t.Fatalf("the extra replica never became ready:\n%s", devcluster.Tail(p.log, 10))
	}
	t.Log("root's extra replica (replica-extra, its own audit directory) joined the cluster and serves")

	relay := c.Setup.PKI.Clients["relay"]
	tc, err := pki.ClientTLSConfig(c.Setup.PKI.CAFile, relay.CertFile, relay.KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	extra, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	clients := []custodyv1.CryptoServiceClient{custodyv1.NewCryptoServiceClient(extra)}
	for i := range c.Replicas {
		clients = append(clients, crypto(t, c, i))
	}
	var mu sync.Mutex
	served := 0
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Go(func() {
			for range 3 * volume {
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				_, err := cl.Encrypt(cctx, &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("m")})
				cancel()
				if err == nil {
					mu.Lock()
					served++
					mu.Unlock()
				} else if strings.Contains(err.Error(), "frozen") {
					return
				}
			}
		})
	}
	wg.Wait()
	bound := volume + 2*len(clients) // documented: the budget plus one slice (2 units here) per replica
	t.Logf("a budget of %d spent through %d replicas (one of them root's extra) served %d (bound %d)", volume, len(clients), served, bound)
	if served > bound {
		t.Errorf("HOLE: root's extra replica stretched a budget of %d to %d requests (bound %d)", volume, served, bound)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestRedteamRootStoreRollbackWithinCheckpointWindow: as above, but root
// does not wait for a checkpoint: right after the revocation it SIGKILLs
// its replica (no shutdown checkpoint), puts the older copy back and starts
// on a new audit directory. Every mark on the token and every checkpoint
// predates the revocation (checkpoints come every 1000 records or
// audit.checkpoint_interval, 1 s by default since this test was written), so nothing records the
// newer store revision, except the anchor an officer's approval makes on
// the token before it is answered (server Options.Anchor): the defence
// must still refuse the older store.
func TestRedteamRootStoreRollbackWithinCheckpointWindow(t *testing.T) {
	c := startCluster(t, govExtra)
	g := ceremony(t, c, 1<<30)
	ctx := t.Context()
	ct, err := crypto(t, c, 2).Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "spare", Plaintext: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	for i := range c.Replicas {
		checkpoint(t, c, i) // marks up to date before the snapshot: the window is what follows
	}
	time.Sleep(2 * time.Second)
	snap := rtTake(t, c)
	g.rtRevoke(t, 0, "relay-spare", "spare", ct.GetCiphertext())
	root := c.Replicas[2]
	root.Kill()
	rtRestore(t, c, snap)
	fresh := rtNewDir(t, filepath.Join(root.Dir, "audit-new"))
	ok, log := rtRestart(t, root, 30*time.Second, func(s string) string {
		return strings.Replace(s, strconv.Quote(root.AuditDir()), strconv.Quote(fresh), 1)
	})
	if !ok {
		t.Logf("held: %s", lastLines(log, 3))
		return
	}
	_, derr := crypto(t, c, 2).Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: "spare", Ciphertext: ct.GetCiphertext()})
	t.Errorf("HOLE: a store rolled back to just before a quorum revocation (made < 60 s earlier, no checkpoint since) "+
		"was accepted by replica 2 restarted on a new audit directory; decrypt under the revoked grant: err=%v", derr)
}

// rtEvidence starts a cluster after a ceremony, has replica 2 record 20
// encrypts and publish a checkpoint of them (and its mark), and returns the
// cluster and replica 2.
func rtEvidence(t *testing.T) (*devcluster.Cluster, *devcluster.Replica) {
	t.Helper()
	c := startCluster(t, govExtra)
	ceremony(t, c, 1<<30)
	for range 20 {
		if _, err := crypto(t, c, 2).Encrypt(t.Context(), &custodyv1.EncryptRequest{KeyName: "spare", Plaintext: []byte("evidence")}); err != nil {
			t.Fatal(err)
		}
	}
	checkpoint(t, c, 2)
	time.Sleep(2 * time.Second)
	return c, c.Replicas[2]
}

// TestRedteamRootEmptiedAuditHistorySameReplica: root moves its replica's
// audit directory away (the evidence) and starts it, under the same
// replica_id, on a new, empty one. The replica's mark on the token is named
// by its replica_id, so the start is refused: the directory is empty but
// the mark is at record N.
func TestRedteamRootEmptiedAuditHistorySameReplica(t *testing.T) {
	c, root := rtEvidence(t)
	_ = c
	dir1 := rtNewDir(t, filepath.Join(root.Dir, "audit-empty-1"))
	ok, log := rtRestart(t, root, 30*time.Second, func(s string) string {
		return strings.Replace(s, strconv.Quote(root.AuditDir()), strconv.Quote(dir1), 1)
	})
	if ok {
		t.Fatalf("HOLE: replica 2 started with the same replica_id on an EMPTY audit directory although its mark on the token shows a chain of records")
	}
	if !strings.Contains(log, "is empty, but the token's audit mark is at record") {
		t.Fatalf("refused, but not for its emptied history:\n%s", lastLines(log, 5))
	}
}

// TestRedteamRootEmptiedAuditHistoryNewReplica: root deletes its replica's
// published checkpoint from etcd with custodyd's credentials, and starts it
// under a new replica_id on a new, empty audit directory. The old chain is
// then not even reported "missing" to an auditor, and its mark on the token
// would be orphaned. Every start on a shared store compares the marks on the
// token (which root cannot delete without the PIN) with the published
// checkpoints, and refuses when a replica's is missing.
func TestRedteamRootEmptiedAuditHistoryNewReplica(t *testing.T) {
	c, root := rtEvidence(t)
	ctx := t.Context()
	root.Stop() // its shutdown checkpoint is published: delete it after
	cli := rtEtcd(t, c)
	if _, err := cli.Delete(ctx, c.Prefix+"kv/"+daemon.CheckpointPrefix+root.ID()); err != nil {
		t.Fatal(err)
	}
	dir2 := rtNewDir(t, filepath.Join(root.Dir, "audit-empty-2"))
	ok, log := rtRestart(t, root, 30*time.Second, func(s string) string {
		s = strings.Replace(s, strconv.Quote(root.AuditDir()), strconv.Quote(dir2), 1)
		return strings.Replace(s, rtReplicaLine(root), "replica_id: replica-2b\n", 1)
	})
	if !ok {
		if !strings.Contains(log, "no published checkpoint in store") {
			t.Fatalf("refused, but not for the deleted checkpoint:\n%s", lastLines(log, 5))
		}
		return
	}
	var ids []string
	for _, cp := range publishedCheckpoints(t, c) {
		ids = append(ids, cp.InstanceID)
	}
	t.Errorf("HOLE: after deleting its published checkpoint, replica 2 started as replica-2b on an empty audit directory; "+
		"the published checkpoints an auditor verifies against name %v: replica-2's chain (and its records) is gone "+
		"without a trace outside the orphaned mark on the token, which nothing reads", ids)
}
