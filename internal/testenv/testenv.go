// Package testenv runs a real custodyd in-process for tests: a SoftHSM
// token, a bbolt store and an audit log in t.TempDir(), gRPC with mTLS on
// 127.0.0.1, and client certificates for each role from a per-test CA.
// Nothing is mocked. Tests using it must not run in parallel (SoftHSM's
// configuration is process-wide).
package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/pki"
)

// CertPair is a client certificate and its key.
type CertPair struct{ CertFile, KeyFile, Identity string }

// Env is a running custodyd.
type Env struct {
	Dir      string
	Addr     string
	HTTPAddr string
	CAFile   string
	// Cert holds client certificates by name: the roles "relay",
	// "operator", "officer", "auditor", plus any Settings.ExtraClients.
	Cert   map[string]CertPair
	Config *config.Config
	D      *daemon.Daemon
	opts   daemon.Options

	// GatewayAddr is the REST/JSON gateway's address ("" unless
	// Settings.Gateway).
	GatewayAddr string
}

// Settings adjust the environment before custodyd starts.
type Settings struct {
	// ExtraClients get certificates from the same CA but no identity in the
	// config unless Mutate adds one (e.g. "relay2", "stranger").
	ExtraClients []string
	// Mutate edits the generated config (grants, identities, limits).
	Mutate func(e *Env, c *config.Config)
	// Options for the daemon (clock, destroy interval).
	Daemon daemon.Options
	// Gateway serves the REST/JSON gateway on 127.0.0.1:0 (off otherwise).
	Gateway bool
}

// Start runs custodyd and stops it when the test ends.
func Start(t testing.TB, s Settings) *Env {
	t.Helper()
	t.Setenv("SOFTHSM2_CONF", "") // restored after the test; PrepareDev sets it
	dir := t.TempDir()
	setup, cfg, err := daemon.PrepareDev(dir, "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	clients := append(append([]string{}, daemon.DevRoles...), s.ExtraClients...)
	pk, err := pki.GenerateDev(filepath.Join(setup.Dir, "pki"), clients)
	if err != nil {
		t.Fatal(err)
	}
	cfg.GatewayListen = ""
	// Tests start with the demo key only; the dev vault's signing and MAC
	// keys (and their grants) are for `make run` and its documentation.
	cfg.Grants = cfg.Grants[:1]
	if s.Gateway {
		cfg.GatewayListen = "127.0.0.1:0"
	}
	e := &Env{Dir: setup.Dir, CAFile: pk.CAFile, Cert: map[string]CertPair{}, Config: cfg}
	for name, c := range pk.Clients {
		e.Cert[name] = CertPair{CertFile: c.CertFile, KeyFile: c.KeyFile, Identity: c.Identity}
	}
	if s.Mutate != nil {
		s.Mutate(e, cfg)
		if err := cfg.Validate(); err != nil {
			t.Fatalf("test config: %v", err)
		}
	}
	if s.Daemon.Logger == nil {
		s.Daemon.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.Daemon.DestroyCheckInterval == 0 {
		s.Daemon.DestroyCheckInterval = 50 * time.Millisecond
	}
	e.opts = s.Daemon
	e.start(t)
	return e
}

func (e *Env) start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := daemon.Start(ctx, e.Config, e.opts)
	if err != nil {
		t.Fatalf("start custodyd: %v", err)
	}
	e.D = d
	e.Addr, e.HTTPAddr, e.GatewayAddr = d.GRPCAddr(), d.HTTPAddr(), d.GatewayAddr()
	t.Cleanup(func() { e.Stop(t) })
}

// Stop shuts custodyd down (idempotent).
func (e *Env) Stop(t testing.TB) {
	if e.D == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.D.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	e.D = nil
}

// Restart stops custodyd and starts it again on the same token, store and
// audit directory (new ports: addresses change, so dial again).
func (e *Env) Restart(t testing.TB) {
	t.Helper()
	e.Stop(t)
	e.Config.Listen, e.Config.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
	if e.Config.GatewayListen != "" {
		e.Config.GatewayListen = "127.0.0.1:0"
	}
	e.start(t)
}

// Dial connects as the named client over mTLS.
func (e *Env) Dial(t testing.TB, client string) *grpc.ClientConn {
	t.Helper()
	c, ok := e.Cert[client]
	if !ok {
		t.Fatalf("no client certificate %q", client)
	}
	tlsCfg, err := pki.ClientTLSConfig(e.CAFile, c.CertFile, c.KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// HTTPClient is an HTTPS client for the REST/JSON gateway that presents the
// named client's certificate ("" presents none) and trusts the test CA. Its
// base URL is "https://" + e.GatewayAddr.
func (e *Env) HTTPClient(t testing.TB, client string) *http.Client {
	t.Helper()
	var tlsCfg *tls.Config
	if client == "" {
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(e.CAFile)
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			t.Fatalf("read test CA %s: %v", e.CAFile, err)
		}
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "localhost"}
	} else {
		c, ok := e.Cert[client]
		if !ok {
			t.Fatalf("no client certificate %q", client)
		}
		var err error
		if tlsCfg, err = pki.ClientTLSConfig(e.CAFile, c.CertFile, c.KeyFile, "localhost"); err != nil {
			t.Fatal(err)
		}
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// Keys is a KeyService client for the named client.
func (e *Env) Keys(t testing.TB, client string) custodyv1.KeyServiceClient {
	return custodyv1.NewKeyServiceClient(e.Dial(t, client))
}

// Crypto is a CryptoService client for the named client.
func (e *Env) Crypto(t testing.TB, client string) custodyv1.CryptoServiceClient {
	return custodyv1.NewCryptoServiceClient(e.Dial(t, client))
}

// CreateKey creates a key as the operator.
func (e *Env) CreateKey(t testing.TB, name string, purpose custodyv1.KeyPurpose) *custodyv1.Key {
	t.Helper()
	k, err := e.Keys(t, "operator").CreateKey(context.Background(), &custodyv1.CreateKeyRequest{Name: name, Purpose: purpose})
	if err != nil {
		t.Fatalf("create key %s: %v", name, err)
	}
	return k
}

// Grant returns a Mutate step that grants ops on keys to the dev relay.
func Grant(client string, keys []string, ops []config.Operation, allowPlaintext bool) func(*Env, *config.Config) {
	return func(e *Env, c *config.Config) {
		c.Grants = append(c.Grants, config.GrantConfig{Identity: "dev-" + client, Keys: keys, Operations: ops, AllowPlaintext: allowPlaintext})
	}
}
