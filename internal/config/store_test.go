package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// etcdYAML replaces the bbolt store section of a valid config with an etcd one.
func (e env) etcdYAML(t *testing.T, etcd string) string {
	t.Helper()
	base := e.yaml("")
	old := "store:\n  path: " + e.store + "\n"
	if !strings.Contains(base, old) {
		t.Fatal("store section not found in the test config")
	}
	return strings.Replace(base, old, "store:\n  backend: etcd\n  etcd:\n"+etcd, 1)
}

func (e env) etcdFiles(t *testing.T) (ca, cert, key string) {
	t.Helper()
	return e.ca, e.cert, e.key // any readable PEM files do for validation
}

func TestLoadAcceptsEtcdStore(t *testing.T) {
	e := newEnv(t)
	ca, cert, key := e.etcdFiles(t)
	cfg, err := Load(e.write(t, e.etcdYAML(t, fmt.Sprintf(`    endpoints: [https://127.0.0.1:2379, "https://etcd-1.example:2379"]
    ca_file: %s
    cert_file: %s
    key_file: %s
    prefix: /custody/prod/
    dial_timeout: 3s
`, ca, cert, key))))
	if err != nil {
		t.Fatalf("etcd config refused: %v", err)
	}
	s := cfg.Store
	if s.Backend != BackendEtcd || len(s.Etcd.Endpoints) != 2 || s.Etcd.Prefix != "/custody/prod/" ||
		s.Etcd.DialTimeout != 3*time.Second || s.Etcd.RequestTimeout != DefaultEtcdRequestTimeout || s.Path != "" {
		t.Fatalf("store = %+v", s)
	}
	if got := s.String(); !strings.Contains(got, "etcd https://127.0.0.1:2379") {
		t.Fatalf("String() = %q", got)
	}
	// The default backend stays bbolt with its default path.
	if cfg := e.valid(t); cfg.Store.Backend != BackendBbolt || cfg.Store.Path != e.store {
		t.Fatalf("default store = %+v", cfg.Store)
	}
}

func TestLoadReportsUnknownEtcdFieldWithItsPath(t *testing.T) {
	e := newEnv(t)
	_, err := Load(e.write(t, e.etcdYAML(t, "    endpoint: https://127.0.0.1:2379\n")))
	if err == nil || !strings.Contains(err.Error(), "store.etcd.endpoint: unknown field") {
		t.Fatalf("err = %v; want the unknown field store.etcd.endpoint named", err)
	}
}

// TestValidateEtcdStoreNamesFieldPath breaks one etcd store field at a time
// and expects exactly one problem, naming that field.
func TestValidateEtcdStoreNamesFieldPath(t *testing.T) {
	e := newEnv(t)
	ca, cert, key := e.etcdFiles(t)
	worldKey := filepath.Join(e.dir, "world-key.pem")
	if err := os.WriteFile(worldKey, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := func() *Config {
		cfg := e.valid(t)
		cfg.Store = StoreConfig{Backend: BackendEtcd, Etcd: EtcdConfig{
			Endpoints: []string{"https://127.0.0.1:2379"}, CAFile: ca, CertFile: cert, KeyFile: key,
		}}
		cfg.ApplyDefaults()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("base etcd config refused: %v", err)
		}
		return cfg
	}
	cases := []struct {
		name   string
		mutate func(c *Config)
		path   string
		want   string
	}{
		{"unknown backend", func(c *Config) { c.Store.Backend = "consul" }, "store.backend", `"consul" is not one of bbolt, etcd`},
		{"no endpoints", func(c *Config) { c.Store.Etcd.Endpoints = nil }, "store.etcd.endpoints", "at least one"},
		{"plaintext endpoint", func(c *Config) { c.Store.Etcd.Endpoints[0] = "http://127.0.0.1:2379" }, "store.etcd.endpoints[0]", "must use https"},
		{"endpoint without port", func(c *Config) { c.Store.Etcd.Endpoints[0] = "https://etcd" }, "store.etcd.endpoints[0]", "needs a port"},
		{"endpoint with path", func(c *Config) { c.Store.Etcd.Endpoints[0] = "https://etcd:2379/v3" }, "store.etcd.endpoints[0]", "scheme://host:port only"},
		{"endpoint not a URL", func(c *Config) { c.Store.Etcd.Endpoints[0] = "etcd:2379" }, "store.etcd.endpoints[0]", "not a URL"},
		{"endpoint twice", func(c *Config) { c.Store.Etcd.Endpoints = append(c.Store.Etcd.Endpoints, c.Store.Etcd.Endpoints[0]) }, "store.etcd.endpoints[1]", "more than once"},
		{"no ca", func(c *Config) { c.Store.Etcd.CAFile = "" }, "store.etcd.ca_file", "is required"},
		{"cert absent", func(c *Config) { c.Store.Etcd.CertFile = "/nonexistent/etcd.pem" }, "store.etcd.cert_file", "does not exist"},
		{"key relative", func(c *Config) { c.Store.Etcd.KeyFile = "etcd-key.pem" }, "store.etcd.key_file", "absolute path"},
		{"key world-readable", func(c *Config) { c.Store.Etcd.KeyFile = worldKey }, "store.etcd.key_file", "accessible by others"},
		{"prefix root", func(c *Config) { c.Store.Etcd.Prefix = "/" }, "store.etcd.prefix", "must start and end with /"},
		{"prefix open", func(c *Config) { c.Store.Etcd.Prefix = "/custody" }, "store.etcd.prefix", "must start and end with /"},
		{"dial timeout", func(c *Config) { c.Store.Etcd.DialTimeout = time.Millisecond }, "store.etcd.dial_timeout", "out of range"},
		{"request timeout", func(c *Config) { c.Store.Etcd.RequestTimeout = time.Hour }, "store.etcd.request_timeout", "out of range"},
		{"path with etcd", func(c *Config) { c.Store.Path = e.store }, "store.path", "only used with store.backend: bbolt"},
		{"etcd with bbolt", func(c *Config) { c.Store.Backend, c.Store.Path = BackendBbolt, e.store }, "store.etcd", "only used with store.backend: etcd"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := good()
			c.mutate(cfg)
			ps := problemsOf(t, cfg.Validate())
			if len(ps) != 1 {
				t.Fatalf("got %d problems, want 1: %v", len(ps), ps)
			}
			if ps[0].Path != c.path || !strings.Contains(ps[0].Message, c.want) {
				t.Fatalf("problem %q; want path %q and message containing %q", ps[0], c.path, c.want)
			}
		})
	}
}
