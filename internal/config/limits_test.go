package config

import (
	"strings"
	"testing"
	"time"
)

func TestLimitsDefaultToSafeValuesWhenOmitted(t *testing.T) {
	e := newEnv(t)
	l := e.valid(t).Limits
	if l.MaxConnections != 0 || l.MemoryLimitBytes != 0 {
		t.Errorf("max_connections %d, memory_limit_bytes %d: want 0 (derived from the host at start-up)", l.MaxConnections, l.MemoryLimitBytes)
	}
	if l.HandshakeTimeout != 5*time.Second || l.MaxHandshakes != 1024 || l.MaxConnectionsPerSource != 256 ||
		l.MaxInflightPerIdentity != 64 || l.FDReserve != 1024 || l.MaxHeaderBytes != 65536 || l.MemoryRefusePercent != 85 {
		t.Errorf("connection defaults: %+v", l)
	}
	if k := l.Keepalive; k.MinTime != 20*time.Second || k.PermitWithoutStream || k.MaxConnectionIdle != 5*time.Minute ||
		k.MaxConnectionAge != 30*time.Minute || k.MaxConnectionAgeGrace != time.Minute || k.Time != time.Minute || k.Timeout != 20*time.Second {
		t.Errorf("keepalive defaults: %+v", k)
	}
	if g := l.Gateway; g.ReadHeaderTimeout != 5*time.Second || g.ReadTimeout != time.Minute || g.WriteTimeout != time.Minute ||
		g.IdleTimeout != 2*time.Minute || g.MaxBodyBytes != 24<<20 {
		t.Errorf("gateway defaults: %+v", g)
	}
	if h := l.HTTP; h.MaxConnections != 64 || h.MaxConnectionsPerSource != 16 {
		t.Errorf("http defaults: %+v", h)
	}
}

func TestLimitsSectionDecodesEveryField(t *testing.T) {
	e := newEnv(t)
	cfg, err := Load(e.write(t, e.yaml(`limits:
  max_connections: 5000
  fd_reserve: 512
  max_connections_per_source: 100
  max_handshakes: 300
  handshake_timeout: 2s
  max_inflight_per_identity: 16
  max_header_bytes: 8192
  memory_limit_bytes: 1073741824
  memory_refuse_percent: 90
  keepalive: {min_time: 10s, permit_without_stream: true, max_connection_idle: 1m, max_connection_age: 10m, max_connection_age_grace: 30s, time: 30s, timeout: 5s}
  gateway: {read_header_timeout: 2s, read_timeout: 20s, write_timeout: 30s, idle_timeout: 1m, max_body_bytes: 1048576}
  http: {max_connections: 32, max_connections_per_source: 8}
`)))
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Limits
	if l.MaxConnections != 5000 || l.FDReserve != 512 || l.MaxConnectionsPerSource != 100 || l.MaxHandshakes != 300 ||
		l.HandshakeTimeout != 2*time.Second || l.MaxInflightPerIdentity != 16 || l.MaxHeaderBytes != 8192 ||
		l.MemoryLimitBytes != 1<<30 || l.MemoryRefusePercent != 90 ||
		!l.Keepalive.PermitWithoutStream || l.Keepalive.Timeout != 5*time.Second || l.Keepalive.MaxConnectionAgeGrace != 30*time.Second ||
		l.Gateway.MaxBodyBytes != 1<<20 || l.Gateway.WriteTimeout != 30*time.Second || l.HTTP.MaxConnectionsPerSource != 8 {
		t.Fatalf("limits decoded to %+v", l)
	}
}

func TestLimitsAreValidatedWithFieldPaths(t *testing.T) {
	e := newEnv(t)
	_, err := Load(e.write(t, e.yaml(`limits:
  max_connections: 100
  fd_reserve: 10
  max_connections_per_source: 200
  max_handshakes: 101
  handshake_timeout: 10ms
  max_inflight_per_identity: -1
  max_header_bytes: 100
  memory_limit_bytes: 1000
  memory_refuse_percent: 100
  keepalive: {timeout: 1ms}
  gateway: {read_header_timeout: 90s, read_timeout: 60s, max_body_bytes: 1073741824}
  http: {max_connections: 2, max_connections_per_source: 3}
  maxconns: 1
`)))
	if err == nil {
		t.Fatal("nonsense limits accepted")
	}
	if !strings.Contains(err.Error(), `limits.maxconns: unknown field`) {
		t.Fatalf("unknown field not named: %v", err)
	}
	// Without the unknown field, every bad value is reported by its path.
	_, err = Load(e.write(t, e.yaml(`limits:
  max_connections: 100
  fd_reserve: 10
  max_connections_per_source: 200
  max_handshakes: 101
  handshake_timeout: 10ms
  max_inflight_per_identity: -1
  max_header_bytes: 100
  memory_limit_bytes: 1000
  memory_refuse_percent: 100
  keepalive: {timeout: 1ms}
  gateway: {read_header_timeout: 90s, read_timeout: 60s, max_body_bytes: 1073741824}
  http: {max_connections: 2, max_connections_per_source: 3}
`)))
	ps := problemsOf(t, err)
	want := []string{
		"limits.fd_reserve", "limits.max_connections_per_source", "limits.max_handshakes", "limits.handshake_timeout",
		"limits.max_inflight_per_identity", "limits.max_header_bytes", "limits.memory_limit_bytes",
		"limits.memory_refuse_percent", "limits.keepalive.timeout", "limits.gateway.read_header_timeout",
		"limits.gateway.max_body_bytes", "limits.http.max_connections", "limits.http.max_connections_per_source",
	}
	got := map[string]bool{}
	for _, p := range ps {
		got[p.Path] = true
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("no problem reported for %s; got %v", w, ps)
		}
	}
	// A zero duration means "default", but a negative one is an error.
	_, err = Load(e.write(t, e.yaml("limits: {keepalive: {max_connection_age: -1s}}\n")))
	if err == nil || !strings.Contains(err.Error(), "limits.keepalive.max_connection_age:") {
		t.Fatalf("negative keepalive age: %v", err)
	}
}
