package store_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/store/etcdtest"
	"github.com/custodyhq/custody/internal/store/storetest"
)

var prefixSeq atomic.Int64

// newPrefix returns a vault prefix no other test uses.
func newPrefix() string {
	return fmt.Sprintf("/custody-test/%d-%d/", os.Getpid(), prefixSeq.Add(1))
}

func openEtcd(t testing.TB, c *etcdtest.Cluster, prefix string, mod func(*store.EtcdOptions)) *store.Etcd {
	t.Helper()
	opts := store.EtcdOptions{Endpoints: c.Endpoints(), TLS: c.ClientTLS(), Prefix: prefix, LeaseTTL: 2 * time.Second}
	if mod != nil {
		mod(&opts)
	}
	s, err := store.OpenEtcd(etcdtest.Context(t), opts)
	if err != nil {
		t.Fatalf("open etcd store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestEtcdConformance(t *testing.T) {
	c := etcdtest.Start(t, 1)
	storetest.RunConformance(t, func(t *testing.T) store.Store {
		return openEtcd(t, c, newPrefix(), nil)
	})
}

func TestEtcdElectorConformance(t *testing.T) {
	c := etcdtest.Start(t, 1)
	storetest.RunElectorConformance(t, func(t *testing.T) store.Store {
		return openEtcd(t, c, newPrefix(), nil)
	}, func(t *testing.T, s store.Store) store.Store {
		return openEtcd(t, c, s.(*store.Etcd).Prefix(), nil)
	})
}

// TestEtcdOpenRefusesPlaintextAndBadPrefix: the store never talks to etcd
// without TLS, and a prefix must be a directory of its own.
func TestEtcdOpenRefusesPlaintextAndBadPrefix(t *testing.T) {
	ctx := t.Context()
	if _, err := store.OpenEtcd(ctx, store.EtcdOptions{Endpoints: []string{"https://127.0.0.1:1"}}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("no TLS: %v", err)
	}
	for _, p := range []string{"/", "custody/", "/custody"} {
		_, err := store.OpenEtcd(ctx, store.EtcdOptions{Endpoints: []string{"https://127.0.0.1:1"}, TLS: etcdTLSStub(), Prefix: p})
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("prefix %q: %v", p, err)
		}
	}
}

// TestEtcdOpenFailsFastWhenUnreachable: no member answers → ErrUnavailable
// within the dial timeout, not a hang.
func TestEtcdOpenFailsFastWhenUnreachable(t *testing.T) {
	start := time.Now()
	_, err := store.OpenEtcd(t.Context(), store.EtcdOptions{
		Endpoints: []string{"https://127.0.0.1:1"}, TLS: etcdTLSStub(), DialTimeout: 500 * time.Millisecond,
	})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("open of an unreachable cluster: %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("gave up after %v", took)
	}
}

func etcdTLSStub() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS12} }

// TestEtcdVaultsUnderDifferentPrefixesAreIndependent: other data in the
// cluster (another vault, another application) neither shows up nor moves
// the vault revision.
func TestEtcdVaultsUnderDifferentPrefixesAreIndependent(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	a := openEtcd(t, c, newPrefix(), nil)
	b := openEtcd(t, c, newPrefix(), nil)
	if err := store.Put(ctx, a, "k", []byte("a1")); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := store.Put(ctx, b, "k", []byte("b"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	// A foreign writer straight into etcd, outside both prefixes.
	if _, err := a.Client().Put(ctx, "/other-app/x", "y"); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, a, "k2", []byte("a2")); err != nil {
		t.Fatal(err)
	}
	if r, _ := a.Revision(ctx); r != 2 {
		t.Fatalf("vault a revision = %d, want 2 (its own two writes)", r)
	}
	if r, _ := b.Revision(ctx); r != 5 {
		t.Fatalf("vault b revision = %d, want 5", r)
	}
	if kv, err := a.Get(ctx, "k2"); err != nil || kv.Revision != 2 {
		t.Fatalf("a/k2 = %+v, %v", kv, err)
	}
	kvs, err := a.List(ctx, "", "", 0)
	if err != nil || len(kvs) != 2 {
		t.Fatalf("vault a lists %v, %v", kvs, err)
	}
}

// TestEtcdReplicasShareOneSerialRevision: two replicas (two clients) on one
// prefix update one counter concurrently; nothing is lost and the vault
// revision advances exactly once per committed transaction, and each sees
// the other's writes in its watch with the same revisions.
func TestEtcdReplicasShareOneSerialRevision(t *testing.T) {
	c := etcdtest.Start(t, 1)
	p := newPrefix()
	r1, r2 := openEtcd(t, c, p, nil), openEtcd(t, c, p, nil)
	ctx := t.Context()
	w, err := r2.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	incr := func(old []byte) ([]byte, error) {
		n, _ := strconv.Atoi(string(old))
		return []byte(strconv.Itoa(n + 1)), nil
	}
	const each = 40
	var wg sync.WaitGroup
	for _, s := range []store.Store{r1, r2, r1, r2} {
		wg.Go(func() {
			for range each {
				if err := store.Update(ctx, s, "counter", incr); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	kv, err := r1.Get(ctx, "counter")
	if err != nil || string(kv.Value) != strconv.Itoa(4*each) || kv.Revision != 4*each {
		t.Fatalf("counter = %q@%d, %v; want %d@%d", kv.Value, kv.Revision, err, 4*each, 4*each)
	}
	if err := store.Delete(ctx, r1, "counter"); err != nil {
		t.Fatal(err)
	}
	var last store.Event
	for i := range 4*each + 1 {
		select {
		case ev := <-w:
			if ev.Err != nil || ev.KV.Revision != int64(i+1) {
				t.Fatalf("event %d on the other replica: %+v", i, ev)
			}
			last = ev
		case <-time.After(30 * time.Second):
			t.Fatalf("replica 2 saw %d of %d events", i, 4*each+1)
		}
	}
	if last.Type != store.OpDelete || last.KV.Revision != 4*each+1 {
		t.Fatalf("delete seen as %+v", last)
	}
}

// TestEtcdAuthenticatedDetectsValueEditedInCluster: someone with write
// access to etcd (but not the HSM) edits a sealed grant in place or copies
// one to another key; the vault refuses both with ErrTampered.
func TestEtcdAuthenticatedDetectsValueEditedInCluster(t *testing.T) {
	c := etcdtest.Start(t, 1)
	p := newPrefix()
	raw := openEtcd(t, c, p, nil)
	sealer := storetest.NewHMACSealer(t)
	s := storetest.Authenticated(t, raw, sealer)
	ctx := t.Context()
	if err := store.Put(ctx, s, "grants/alice", []byte(`{"ops":["decrypt"]}`)); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, s, "grants/mallory", []byte(`{"ops":[]}`)); err != nil {
		t.Fatal(err)
	}
	cli := raw.Client()
	get := func(k string) []byte {
		resp, err := cli.Get(ctx, p+"kv/"+k)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("raw get %s: %v", k, err)
		}
		return resp.Kvs[0].Value
	}
	alice := get("grants/alice")
	edited := bytes.Replace(alice, []byte("decrypt"), []byte("unwrapx"), 1)
	if _, err := cli.Put(ctx, p+"kv/grants/alice", string(edited)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, p+"kv/grants/mallory", string(alice)); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"grants/alice", "grants/mallory"} {
		if _, err := s.Get(ctx, k); !errors.Is(err, store.ErrTampered) {
			t.Errorf("get %s after an edit in etcd: %v, want ErrTampered", k, err)
		}
	}
	// A record that is not even in the store's format is corrupt.
	if _, err := cli.Put(ctx, p+"kv/short", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Get(ctx, "short"); !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("get of a foreign record: %v, want ErrCorrupt", err)
	}
}

// TestEtcdQuorumLossFailsClosedAndRecovers: with one of three members down
// the vault keeps working; with two down every call fails with
// ErrUnavailable within the request timeout (no stale answer, no hang);
// when a member comes back the same store handle works again.
func TestEtcdQuorumLossFailsClosedAndRecovers(t *testing.T) {
	c := etcdtest.Start(t, 3)
	s := openEtcd(t, c, newPrefix(), func(o *store.EtcdOptions) { o.RequestTimeout = 2 * time.Second })
	ctx := t.Context()
	if err := store.Put(ctx, s, "k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	c.Members[0].Stop()
	if err := store.Put(ctx, s, "k", []byte("2")); err != nil {
		t.Fatalf("write with 2 of 3 members: %v", err)
	}
	c.Members[1].Stop()
	start := time.Now()
	if _, err := s.Get(ctx, "k"); !errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read without quorum: %v, want ErrUnavailable (and not the caller's deadline)", err)
	}
	if err := store.Put(ctx, s, "k", []byte("3")); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("write without quorum: %v, want ErrUnavailable", err)
	}
	if _, err := s.Revision(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("revision without quorum: %v", err)
	}
	if took := time.Since(start); took > 60*time.Second {
		t.Fatalf("three failing calls took %v", took)
	}
	if err := c.Members[1].Restart(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(c.Members[1], time.Minute); err != nil {
		t.Fatal(err)
	}
	var err error
	for range 100 { // bounded: the client reconnects within a few seconds
		if err = store.Put(ctx, s, "k", []byte("4")); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("no recovery after quorum came back: %v", err)
	}
	kv, err := s.Get(ctx, "k")
	if err != nil || string(kv.Value) != "4" {
		t.Fatalf("after recovery k = %q, %v", kv.Value, err)
	}
	// The write that failed without quorum either applied or not; the
	// revision counts only committed transactions either way.
	if kv.Revision != 3 && kv.Revision != 4 {
		t.Fatalf("revision after recovery = %d", kv.Revision)
	}
}

// TestEtcdWatchFromCompactedRevisionEndsLagged: a watch that cannot be
// served because etcd compacted its history ends with ErrWatchLagged, so
// the reader re-lists instead of missing changes.
func TestEtcdWatchFromCompactedRevisionEndsLagged(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := openEtcd(t, c, newPrefix(), nil)
	ctx := t.Context()
	for i := range 5 {
		if err := store.Put(ctx, s, "k", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := s.Client().Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	ch, err := store.WatchFromEtcdRevision(ctx, s, "", 2)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-ch:
		if !errors.Is(ev.Err, store.ErrWatchLagged) {
			t.Fatalf("watch from a compacted revision: %+v, want ErrWatchLagged", ev)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no event")
	}
	if _, ok := <-ch; ok {
		t.Fatal("watch still open after its final error")
	}
}

// TestEtcdLeaderLeaseRevokedFencesItsWrites: a leader cut off from the
// cluster loses its lease; until it notices, it still believes it leads.
// Its fenced writes must fail from the moment the lease is gone, and the
// next campaigner takes over.
func TestEtcdLeaderLeaseRevokedFencesItsWrites(t *testing.T) {
	c := etcdtest.Start(t, 1)
	p := newPrefix()
	a, b := openEtcd(t, c, p, nil), openEtcd(t, c, p, nil)
	ctx := t.Context()
	la, err := a.Campaign(ctx, "sched", "replica-a")
	if err != nil {
		t.Fatal(err)
	}
	won := make(chan store.Leadership, 1)
	go func() {
		lb, err := b.Campaign(ctx, "sched", "replica-b")
		if err != nil {
			t.Error(err)
		}
		won <- lb
	}()
	// Revoke a's lease behind its back, as an expiry would.
	leases, err := a.Client().Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var aLease clientv3.LeaseID
	resp, err := a.Client().Get(ctx, p+"x/election/sched/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("leader key: %v", err)
	}
	aLease = clientv3.LeaseID(resp.Kvs[0].Lease)
	if len(leases.Leases) == 0 || aLease == 0 {
		t.Fatal("no lease behind the leader key")
	}
	if _, err := b.Client().Revoke(ctx, aLease); err != nil {
		t.Fatal(err)
	}
	var lb store.Leadership
	select {
	case lb = <-won:
	case <-time.After(30 * time.Second):
		t.Fatal("b did not take over after a's lease was revoked")
	}
	if lb == nil {
		t.FailNow()
	}
	if err := la.Txn(ctx, nil, []store.Op{store.PutOp("sched/state", []byte("from a"))}); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("deposed leader's write: %v, want ErrNotLeader", err)
	}
	if err := lb.Txn(ctx, nil, []store.Op{store.PutOp("sched/state", []byte("from b"))}); err != nil {
		t.Fatalf("new leader's write: %v", err)
	}
	if kv, _ := b.Get(ctx, "sched/state"); string(kv.Value) != "from b" {
		t.Fatalf("state = %q", kv.Value)
	}
	select {
	case <-la.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("a never noticed it lost the lease")
	}
}

// TestEtcdLeaderProcessKilledHandsOver: the leader is another process; it is
// SIGKILLed (no resign, no revoke). Its lease expires and a waiting
// campaigner here takes over.
func TestEtcdLeaderProcessKilledHandsOver(t *testing.T) {
	c := etcdtest.Start(t, 1)
	p := newPrefix()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperEtcdCampaignProcess$", "-test.v")
	cmd.Env = append(os.Environ(),
		"ETCDTEST_CAMPAIGN=1", "ETCDTEST_ENDPOINTS="+strings.Join(c.Endpoints(), ","), "ETCDTEST_PREFIX="+p,
		"ETCDTEST_CA="+c.PKI.CAFile, "ETCDTEST_CERT="+c.PKI.ClientCert, "ETCDTEST_KEY="+c.PKI.ClientKey)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		var acc string
		for {
			n, err := out.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- acc[:i]
				acc = acc[i+1:]
			}
			if err != nil {
				close(lines)
				return
			}
		}
	}()
	deadline := time.After(time.Minute)
	for leading := false; !leading; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("helper process exited before leading")
			}
			leading = l == "LEADING"
		case <-deadline:
			t.Fatal("helper process never led")
		}
	}
	s := openEtcd(t, c, p, nil)
	ctx := t.Context()
	if id, err := s.Leader(ctx, "sched"); err != nil || id != "helper" {
		t.Fatalf("leader = %q, %v", id, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	l, err := s.Campaign(cctx, "sched", "survivor")
	if err != nil {
		t.Fatalf("survivor never took over: %v", err)
	}
	t.Logf("hand-over %v after SIGKILL (lease TTL 2s)", time.Since(killed).Round(10*time.Millisecond))
	if id, err := s.Leader(ctx, "sched"); err != nil || id != "survivor" {
		t.Fatalf("leader after hand-over = %q, %v", id, err)
	}
	if err := l.Txn(ctx, nil, []store.Op{store.PutOp("sched/state", []byte("survivor"))}); err != nil {
		t.Fatal(err)
	}
}

// TestHelperEtcdCampaignProcess is the leader process of
// TestEtcdLeaderProcessKilledHandsOver; it does nothing on its own.
func TestHelperEtcdCampaignProcess(t *testing.T) {
	if os.Getenv("ETCDTEST_CAMPAIGN") != "1" {
		return
	}
	pki := &etcdtest.PKI{CAFile: os.Getenv("ETCDTEST_CA"), ClientCert: os.Getenv("ETCDTEST_CERT"), ClientKey: os.Getenv("ETCDTEST_KEY")}
	tc, err := pki.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenEtcd(t.Context(), store.EtcdOptions{
		Endpoints: strings.Split(os.Getenv("ETCDTEST_ENDPOINTS"), ","), TLS: tc,
		Prefix: os.Getenv("ETCDTEST_PREFIX"), LeaseTTL: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Campaign(t.Context(), "sched", "helper"); err != nil {
		t.Fatal(err)
	}
	fmt.Println("LEADING")
	time.Sleep(2 * time.Minute) // killed long before
}

// BenchmarkEtcdPut measures committed vault writes per second on one
// member (fsync on every commit), sequential and from 16 goroutines.
func BenchmarkEtcdPut(b *testing.B) {
	c := etcdtest.Start(b, 1)
	s := openEtcd(b, c, newPrefix(), nil)
	value := bytes.Repeat([]byte("m"), 160)
	// The floor: one plain etcd put per op, no vault revision, no sealing.
	b.Run("rawetcd", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := s.Client().Put(b.Context(), "/bench-raw/"+strconv.Itoa(i%1000), string(value)); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	})
	b.Run("serial", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if err := store.Put(b.Context(), s, "keys/"+strconv.Itoa(i%1000), value); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	})
	b.Run("parallel16", func(b *testing.B) {
		b.SetParallelism(16)
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)
				if err := store.Put(context.Background(), s, "keys/"+strconv.Itoa(int(i%1000)), value); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	})
	// Two replicas (two clients) writing the same vault at once: they race
	// for the vault counter, and a lost race costs a re-read.
	s2 := openEtcd(b, c, s.Prefix(), nil)
	b.Run("tworeplicas16", func(b *testing.B) {
		b.SetParallelism(16)
		var n atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)
				st := store.Store(s)
				if i%2 == 0 {
					st = s2
				}
				if err := store.Put(context.Background(), st, "keys/"+strconv.Itoa(int(i%1000)), value); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	})
}

// TestEtcdLargestTransactionFitsDefaultLimits: a transaction at the store's
// limits (MaxTxnOps conditions, MaxTxnOps writes) commits on an etcd with
// default --max-txn-ops, although the store adds its counter write and reads.
func TestEtcdLargestTransactionFitsDefaultLimits(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := openEtcd(t, c, newPrefix(), nil)
	ctx := t.Context()
	conds := make([]store.Cond, store.MaxTxnOps)
	ops := make([]store.Op, store.MaxTxnOps)
	puts := 0
	for i := range store.MaxTxnOps {
		conds[i] = store.Missing(fmt.Sprintf("c/%03d", i))
		if i%2 == 0 {
			puts++
			ops[i] = store.PutOp(fmt.Sprintf("k/%03d", i), bytes.Repeat([]byte("v"), 1024))
		} else {
			ops[i] = store.DeleteOp(fmt.Sprintf("k/%03d", i-1+store.MaxTxnOps)) // absent: no-op
		}
	}
	if err := s.Txn(ctx, conds, ops); err != nil {
		t.Fatalf("txn at the limits: %v", err)
	}
	kvs, err := s.List(ctx, "k/", "", 0)
	if err != nil || len(kvs) != puts {
		t.Fatalf("listed %d, %v", len(kvs), err)
	}
	if r, _ := s.Revision(ctx); r != 1 {
		t.Fatalf("revision %d, want 1", r)
	}
	big := make([]byte, store.MaxValueSize)
	if err := store.Put(ctx, s, "big", big); err != nil {
		t.Fatalf("value of MaxValueSize: %v", err)
	}
}
