package daemon_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/store/etcdtest"
	"github.com/custodyhq/custody/internal/testenv"
)

// onEtcd is a testenv Mutate step that puts the vault's store on c.
func onEtcd(c *etcdtest.Cluster, prefix string) func(*testenv.Env, *config.Config) {
	return func(_ *testenv.Env, cfg *config.Config) {
		cfg.Store = config.StoreConfig{Backend: config.BackendEtcd, Etcd: config.EtcdConfig{
			Endpoints: c.Endpoints(), CAFile: c.PKI.CAFile, CertFile: c.PKI.ClientCert, KeyFile: c.PKI.ClientKey,
			Prefix: prefix, DialTimeout: 5 * time.Second, RequestTimeout: 2 * time.Second,
		}}
	}
}

func readyz(t *testing.T, e *testenv.Env) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + e.HTTPAddr + "/readyz")
	if err != nil {
		t.Fatalf("readyz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// eventually polls cond every 100ms until it holds or limit passes.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCustodydOnEtcdFailsClosedWhileEtcdUnreachableAndRecovers runs a real
// custodyd on a real etcd member, stops the member, and expects every
// request to be refused with UNAVAILABLE (and audited), /readyz to answer
// 503 naming etcd and the gRPC health service to report NOT_SERVING; then
// restarts the member and expects service to come back without a restart.
func TestCustodydOnEtcdFailsClosedWhileEtcdUnreachableAndRecovers(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e := testenv.Start(t, testenv.Settings{Mutate: onEtcd(c, "/custody/daemon-test/")})
	ctx := t.Context()
	relay := e.Crypto(t, "relay")
	enc, err := relay.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: daemon.DevKey, Plaintext: []byte("before")})
	if err != nil {
		t.Fatalf("encrypt on etcd: %v", err)
	}
	if code, body := readyz(t, e); code != http.StatusOK {
		t.Fatalf("readyz = %d %q", code, body)
	}
	health := healthpb.NewHealthClient(e.Dial(t, "relay"))

	c.Members[0].Stop()
	// A write that reaches the store before the probe notices fails closed
	// with UNAVAILABLE too (the store's own error), never INTERNAL.
	ops := e.Keys(t, "operator")
	_, err = ops.CreateKey(ctx, &custodyv1.CreateKeyRequest{Name: "during-outage", Purpose: custodyv1.KeyPurpose_ENCRYPT_AES256_GCM})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("create key while etcd is down: %v, want UNAVAILABLE", err)
	}
	eventually(t, 30*time.Second, "readyz never reported etcd unreachable", func() bool {
		code, body := readyz(t, e)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "etcd unreachable")
	})
	_, err = relay.Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: daemon.DevKey, Ciphertext: enc.Ciphertext})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "etcd") {
		t.Fatalf("decrypt while etcd is down: %v, want UNAVAILABLE naming etcd", err)
	}
	if hr, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || hr.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while etcd is down: %v, %v", hr, err)
	}
	refused := 0
	err = e.D.Audit.Read(ctx, audit.Filter{Method: "Decrypt"}, func(r audit.Record) error {
		if r.Code == codes.Unavailable.String() {
			refused++
		}
		return nil
	})
	if err != nil || refused == 0 {
		t.Fatalf("the refused decrypt is not on the audit record (%d, %v)", refused, err)
	}

	if err := c.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "custodyd did not recover after etcd came back", func() bool {
		dec, err := relay.Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: daemon.DevKey, Ciphertext: enc.Ciphertext})
		return err == nil && string(dec.Plaintext) == "before"
	})
	if code, body := readyz(t, e); code != http.StatusOK {
		t.Fatalf("readyz after recovery = %d %q", code, body)
	}
	if hr, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || hr.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after recovery: %v, %v", hr, err)
	}
}

// TestCustodydOnEtcdRefusesValueEditedInEtcd: store values are sealed by the
// HSM's HMAC key on etcd exactly as on bbolt. Someone with etcd access but
// not the HSM edits a key record; the next start refuses to serve.
func TestCustodydOnEtcdRefusesValueEditedInEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	const prefix = "/custody/tamper-test/"
	e := testenv.Start(t, testenv.Settings{Mutate: onEtcd(c, prefix)})
	e.Stop(t)

	s, err := store.OpenEtcd(t.Context(), store.EtcdOptions{Endpoints: c.Endpoints(), TLS: c.ClientTLS(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	kvs, err := s.List(t.Context(), "", "", 0)
	if err != nil || len(kvs) == 0 {
		t.Fatalf("vault records in etcd: %d, %v", len(kvs), err)
	}
	edited := 0
	for _, kv := range kvs {
		if !strings.Contains(kv.Key, daemon.DevKey) {
			continue
		}
		v := append([]byte(nil), kv.Value...)
		v[0] ^= 1
		if err := store.Put(t.Context(), s, kv.Key, v); err != nil {
			t.Fatal(err)
		}
		edited++
	}
	if edited == 0 {
		t.Fatalf("no record of key %q among %d", daemon.DevKey, len(kvs))
	}
	e.Config.Listen, e.Config.HTTPListen, e.Config.GatewayListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	d, err := daemon.Start(ctx, e.Config, daemon.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil {
		d.Shutdown(ctx)
		t.Fatal("custodyd started on a store edited in etcd")
	}
	if !errors.Is(err, store.ErrTampered) || !strings.Contains(err.Error(), "etcd") {
		t.Fatalf("start on an edited store: %v; want ErrTampered naming the etcd store", err)
	}
}
