package client

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// replica is one in-process CryptoService over mTLS on 127.0.0.1 that
// decrypts AES-GCM ciphertexts under a key all replicas share, as custodyd
// replicas on one HSM do, and counts what it served.
type replica struct {
	custodyv1.UnimplementedCryptoServiceServer
	aead   cipher.AEAD
	srv    *grpc.Server
	health *health.Server
	addr   string
	served atomic.Int64
}

func (r *replica) Decrypt(_ context.Context, req *custodyv1.DecryptRequest) (*custodyv1.DecryptResponse, error) {
	ct := req.GetCiphertext()
	if len(ct) < 12 {
		return nil, fmt.Errorf("short ciphertext")
	}
	pt, err := r.aead.Open(nil, ct[:12], ct[12:], []byte(req.GetKeyName()))
	if err != nil {
		return nil, err
	}
	r.served.Add(1)
	return &custodyv1.DecryptResponse{Plaintext: pt}, nil
}

func startReplicas(t *testing.T, p *testPKI, n int, aead cipher.AEAD) []*replica {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	var rs []*replica
	for range n {
		r := &replica{aead: aead, health: health.NewServer()}
		r.srv = grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool,
		})))
		custodyv1.RegisterCryptoServiceServer(r.srv, r)
		healthpb.RegisterHealthServer(r.srv, r.health)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r.addr = lis.Addr().String()
		go func() { _ = r.srv.Serve(lis) }()
		t.Cleanup(r.srv.Stop)
		rs = append(rs, r)
	}
	return rs
}

func newSharedKey(t *testing.T) cipher.AEAD {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	b, _ := aes.NewCipher(k)
	a, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func seal(aead cipher.AEAD, key string, pt []byte) []byte {
	nonce := make([]byte, 12)
	rand.Read(nonce)
	return append(nonce, aead.Seal(nil, nonce, pt, []byte(key))...)
}

// TestFailoverKeepsServingWhenAReplicaStopsMidLoad: a client given three
// replicas (one of them as a comma list in Addr, the rest in Addrs) spreads
// decrypts over all three; one replica is stopped abruptly in the middle of
// the load. Every call still succeeds with the right plaintext, the other
// replicas take over, and the stopped one serves nothing afterwards.
func TestFailoverKeepsServingWhenAReplicaStopsMidLoad(t *testing.T) {
	p := newTestPKI(t)
	aead := newSharedKey(t)
	rs := startReplicas(t, p, 3, aead)
	cfg := p.config(rs[0].addr + "," + rs[1].addr)
	cfg.Addrs = []string{rs[2].addr}
	cfg.ServerName = "localhost"
	cfg.MaxAttempts = 6
	c, err := Dial(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const workers, perWorker = 8, 150
	msgs := make([][]byte, 16)
	cts := make([][]byte, len(msgs))
	for i := range msgs {
		msgs[i] = []byte(fmt.Sprintf("message %d", i))
		cts[i] = seal(aead, "k", msgs[i])
	}
	// Connections to the three come up at their own pace (slower on a busy
	// machine): the load starts once each has answered, and is counted
	// from there.
	warm := waitBalanced(t, c, rs, cts[0])
	var done atomic.Int64
	var stopOnce sync.Once
	var servedAtStop int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				j := (w + i) % len(msgs)
				resp, err := c.Crypto().Decrypt(t.Context(), &custodyv1.DecryptRequest{KeyName: "k", Ciphertext: cts[j]})
				if err != nil {
					t.Errorf("call %d of worker %d failed: %v", i, w, err)
					return
				}
				if string(resp.Plaintext) != string(msgs[j]) {
					t.Errorf("wrong answer: %q for %q", resp.Plaintext, msgs[j])
					return
				}
				if done.Add(1) == workers*perWorker/3 {
					stopOnce.Do(func() {
						rs[1].srv.Stop() // abrupt: open connections and in-flight calls are cut
						servedAtStop = rs[1].served.Load()
					})
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	total := -warm
	for i, r := range rs {
		t.Logf("replica %d served %d", i, r.served.Load())
		total += r.served.Load()
	}
	// A call cut after the stopped replica's handler ran is answered again
	// by another (Decrypt is idempotent): at most one per worker in flight.
	if total < workers*perWorker || total > workers*perWorker+workers {
		t.Fatalf("replicas served %d calls, want %d (up to %d more for calls cut mid-answer)", total, workers*perWorker, workers)
	}
	if servedAtStop == 0 {
		t.Fatal("replica 1 served nothing before it was stopped: calls were not balanced")
	}
	if rs[1].served.Load() != servedAtStop {
		t.Fatalf("stopped replica served %d more calls", rs[1].served.Load()-servedAtStop)
	}
	if rs[0].served.Load() == 0 || rs[2].served.Load() == 0 {
		t.Fatal("a surviving replica served nothing")
	}
}

// TestFailoverAvoidsReplicaReportingNotServing: a replica whose health
// service says NOT_SERVING (custodyd cut off from etcd) gets no new calls
// once the client has seen it, and gets them again after SERVING.
func TestFailoverAvoidsReplicaReportingNotServing(t *testing.T) {
	p := newTestPKI(t)
	aead := newSharedKey(t)
	rs := startReplicas(t, p, 2, aead)
	cfg := p.config(rs[0].addr + "," + rs[1].addr)
	cfg.ServerName = "localhost"
	c, err := Dial(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ct := seal(aead, "k", []byte("x"))
	call := func(n int) {
		t.Helper()
		for range n {
			if _, err := c.Crypto().Decrypt(t.Context(), &custodyv1.DecryptRequest{KeyName: "k", Ciphertext: ct}); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitBalanced(t, c, rs, ct)
	rs[0].health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	// The health watch reaches the client asynchronously: wait (bounded)
	// until a batch of calls all lands on replica 1.
	deadline := time.Now().Add(20 * time.Second)
	for {
		before := rs[0].served.Load()
		call(20)
		if rs[0].served.Load() == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the NOT_SERVING replica kept getting calls")
		}
		time.Sleep(50 * time.Millisecond)
	}
	rs[0].health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	deadline = time.Now().Add(20 * time.Second)
	for before := rs[0].served.Load(); rs[0].served.Load() == before; {
		call(10)
		if time.Now().After(deadline) {
			t.Fatal("the replica got no calls after it reported SERVING again")
		}
	}
}

func TestEndpointsAndBalancedTarget(t *testing.T) {
	got := Endpoints("a:1, b:2,,a:1", "c:3")
	if fmt.Sprint(got) != "[a:1 b:2 c:3]" {
		t.Fatalf("Endpoints = %v", got)
	}
	if tgt, _, err := BalancedTarget([]string{"custody.example:8443"}, ""); err != nil || tgt != "dns:///custody.example:8443" {
		t.Fatalf("one name: %q, %v", tgt, err)
	}
	if _, _, err := BalancedTarget([]string{"a:1", "nonsense"}, ""); err == nil {
		t.Fatal("a list with a bad address was accepted")
	}
	if _, _, err := BalancedTarget(nil, ""); err == nil {
		t.Fatal("no address was accepted")
	}
}

// waitBalanced makes Decrypt calls until every replica has served one
// (each connection is up and picked), failing after 20 s, and returns the
// number of calls the replicas served meanwhile.
func waitBalanced(t *testing.T, c *Client, rs []*replica, ct []byte) int64 {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		all, total := true, int64(0)
		for _, r := range rs {
			all = all && r.served.Load() > 0
			total += r.served.Load()
		}
		if all {
			return total
		}
		if time.Now().After(deadline) {
			for i, r := range rs {
				t.Logf("replica %d served %d", i, r.served.Load())
			}
			t.Fatal("calls were not balanced over the replicas within 20 s")
		}
		if _, err := c.Crypto().Decrypt(t.Context(), &custodyv1.DecryptRequest{KeyName: "k", Ciphertext: ct}); err != nil {
			t.Fatal(err)
		}
	}
}
