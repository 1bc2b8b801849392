package config

import (
	"time"
)

// LimitsConfig bounds what clients, authenticated or not, can hold of
// custodyd: connections, TLS handshakes in progress, requests in flight
// and memory. Every field has a safe default; see docs/operations.md
// ("Capacity") for how to size them.
type LimitsConfig struct {
	// MaxConnections caps the connections open at once over the gRPC and
	// gateway listeners together (handshaking or established). 0, the
	// default, derives it at start-up: the process's descriptor limit
	// (RLIMIT_NOFILE, raised from soft to hard) minus FDReserve minus
	// HTTP.MaxConnections. A value above that is refused at start-up.
	MaxConnections int `yaml:"max_connections"`
	// FDReserve is how many descriptors are kept for everything that is
	// not a client connection: the store, the audit log, the HSM library,
	// logs. Default 1024.
	FDReserve int `yaml:"fd_reserve"`
	// MaxConnectionsPerSource caps the connections from one source
	// address (one IPv4 address, or one IPv6 /64). Default 256.
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`
	// MaxHandshakes caps the connections that have not finished their TLS
	// handshake. When it is reached a new connection evicts the oldest
	// unfinished one, so idle or slow handshakes cannot lock newcomers out.
	// Default 1024.
	MaxHandshakes int `yaml:"max_handshakes"`
	// HandshakeTimeout is how long a connection may take from accept to a
	// finished TLS handshake (gateway: to its first request); after it the
	// connection is closed. Default 5s.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// MaxInflightPerIdentity caps the requests one client identity may
	// have in flight at once, over gRPC and the gateway together; beyond
	// it requests are refused with RESOURCE_EXHAUSTED and a retry hint.
	// Default 64.
	MaxInflightPerIdentity int `yaml:"max_inflight_per_identity"`
	// MaxHeaderBytes bounds request headers (gRPC metadata, HTTP headers
	// on the gateway). Default 65536.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MemoryLimitBytes is the Go runtime's soft memory limit
	// (debug.SetMemoryLimit). 0, the default, keeps GOMEMLIMIT if it is
	// set, else derives 80% of the cgroup memory limit, else 50% of
	// physical memory.
	MemoryLimitBytes int64 `yaml:"memory_limit_bytes"`
	// MemoryRefusePercent: new requests are refused with UNAVAILABLE (and
	// a retry hint) while the live heap is above this percentage of the
	// memory limit. Default 85.
	MemoryRefusePercent int `yaml:"memory_refuse_percent"`
	// Keepalive configures gRPC keepalive enforcement and connection ages.
	Keepalive KeepaliveConfig `yaml:"keepalive"`
	// Gateway bounds the REST/JSON gateway's HTTP requests.
	Gateway GatewayLimitsConfig `yaml:"gateway"`
	// HTTP is the metrics/health listener's own connection budget, so a
	// flood of the other ports cannot make it unreachable.
	HTTP HTTPLimitsConfig `yaml:"http"`
}

// KeepaliveConfig is the gRPC server's keepalive policy.
type KeepaliveConfig struct {
	// MinTime is the shortest interval at which a client may ping; a client
	// pinging faster is disconnected (GOAWAY "too_many_pings"). Default 20s.
	MinTime time.Duration `yaml:"min_time"`
	// PermitWithoutStream allows client pings on a connection with no
	// active call. Default false.
	PermitWithoutStream bool `yaml:"permit_without_stream"`
	// MaxConnectionIdle closes a connection without calls for this long.
	// Default 5m.
	MaxConnectionIdle time.Duration `yaml:"max_connection_idle"`
	// MaxConnectionAge closes any connection after this long (±10%), so
	// clients reconnect, re-authenticate and rebalance. Default 30m.
	MaxConnectionAge time.Duration `yaml:"max_connection_age"`
	// MaxConnectionAgeGrace is how long calls may continue on a connection
	// past its age before it is closed. Default 1m.
	MaxConnectionAgeGrace time.Duration `yaml:"max_connection_age_grace"`
	// Time: the server pings a client after this long without activity...
	// Default 1m.
	Time time.Duration `yaml:"time"`
	// Timeout: ...and closes the connection if no answer comes in this
	// long. Default 20s.
	Timeout time.Duration `yaml:"timeout"`
}

// GatewayLimitsConfig bounds the REST/JSON gateway's HTTP requests.
type GatewayLimitsConfig struct {
	// ReadHeaderTimeout bounds reading a request's headers. Default 5s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// ReadTimeout bounds reading a whole request, body included. Default 60s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds the time from the end of the request headers to
	// the end of the response. Default 60s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout closes a keep-alive connection idle this long. Default 2m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxBodyBytes bounds a request body; larger ones get 413. Default
	// 25165824 (24 MiB: a full 16 MiB gRPC message in base64).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
}

// HTTPLimitsConfig is the metrics/health listener's connection budget.
type HTTPLimitsConfig struct {
	// MaxConnections caps its open connections. Default 64.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerSource caps them per source address. Default 16.
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`
}

// Defaults of the limits section.
const (
	DefaultFDReserve               = 1024
	DefaultMaxConnectionsPerSource = 256
	DefaultMaxHandshakes           = 1024
	DefaultHandshakeTimeout        = 5 * time.Second
	DefaultMaxInflightPerIdentity  = 64
	DefaultMaxHeaderBytes          = 64 << 10
	DefaultMemoryRefusePercent     = 85
	DefaultKeepaliveMinTime        = 20 * time.Second
	DefaultMaxConnectionIdle       = 5 * time.Minute
	DefaultMaxConnectionAge        = 30 * time.Minute
	DefaultMaxConnectionAgeGrace   = time.Minute
	DefaultKeepaliveTime           = time.Minute
	DefaultKeepaliveTimeout        = 20 * time.Second
	DefaultGatewayReadHeader       = 5 * time.Second
	DefaultGatewayReadTimeout      = 60 * time.Second
	DefaultGatewayWriteTimeout     = 60 * time.Second
	DefaultGatewayIdleTimeout      = 2 * time.Minute
	DefaultGatewayMaxBodyBytes     = 24 << 20
	DefaultHTTPMaxConnections      = 64
	DefaultHTTPMaxPerSource        = 16
)

// Bounds enforced by validate.
const (
	minFDReserve          = 64
	maxConnectionsLimit   = 10_000_000
	minMaxConnections     = 16
	minHandshakeTimeout   = 100 * time.Millisecond
	maxHandshakeTimeout   = 2 * time.Minute
	maxInflightLimit      = 100_000
	minHeaderBytes        = 1 << 10
	maxHeaderBytesLimit   = 1 << 20
	minMemoryLimitBytes   = 64 << 20
	minKeepaliveDuration  = 100 * time.Millisecond
	minGatewayTimeout     = 100 * time.Millisecond
	minGatewayBodyBytes   = 1 << 10
	maxGatewayBodyBytes   = 64 << 20
	maxHTTPConnections    = 10_000
	minHTTPMaxConnections = 4
)

func setDuration(p *time.Duration, def time.Duration) {
	if *p == 0 {
		*p = def
	}
}

// applyDefaults fills the limits left at zero. MaxConnections and
// MemoryLimitBytes stay 0: they are derived from the host at start-up.
func (l *LimitsConfig) applyDefaults() {
	setInt(&l.FDReserve, DefaultFDReserve)
	setInt(&l.MaxConnectionsPerSource, DefaultMaxConnectionsPerSource)
	setInt(&l.MaxHandshakes, DefaultMaxHandshakes)
	setDuration(&l.HandshakeTimeout, DefaultHandshakeTimeout)
	setInt(&l.MaxInflightPerIdentity, DefaultMaxInflightPerIdentity)
	setInt(&l.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setInt(&l.MemoryRefusePercent, DefaultMemoryRefusePercent)
	k := &l.Keepalive
	setDuration(&k.MinTime, DefaultKeepaliveMinTime)
	setDuration(&k.MaxConnectionIdle, DefaultMaxConnectionIdle)
	setDuration(&k.MaxConnectionAge, DefaultMaxConnectionAge)
	setDuration(&k.MaxConnectionAgeGrace, DefaultMaxConnectionAgeGrace)
	setDuration(&k.Time, DefaultKeepaliveTime)
	setDuration(&k.Timeout, DefaultKeepaliveTimeout)
	g := &l.Gateway
	setDuration(&g.ReadHeaderTimeout, DefaultGatewayReadHeader)
	setDuration(&g.ReadTimeout, DefaultGatewayReadTimeout)
	setDuration(&g.WriteTimeout, DefaultGatewayWriteTimeout)
	setDuration(&g.IdleTimeout, DefaultGatewayIdleTimeout)
	if g.MaxBodyBytes == 0 {
		g.MaxBodyBytes = DefaultGatewayMaxBodyBytes
	}
	setInt(&l.HTTP.MaxConnections, DefaultHTTPMaxConnections)
	setInt(&l.HTTP.MaxConnectionsPerSource, DefaultHTTPMaxPerSource)
}

func (l LimitsConfig) validate(ps *problems) {
	const p = "limits."
	if l.MaxConnections != 0 {
		if l.MaxConnections < minMaxConnections || l.MaxConnections > maxConnectionsLimit {
			ps.add(p+"max_connections", "%d is out of range %d..%d (or 0: derived from the descriptor limit)", l.MaxConnections, minMaxConnections, maxConnectionsLimit)
		} else {
			if l.MaxConnectionsPerSource > l.MaxConnections {
				ps.add(p+"max_connections_per_source", "%d exceeds limits.max_connections (%d)", l.MaxConnectionsPerSource, l.MaxConnections)
			}
			if l.MaxHandshakes > l.MaxConnections {
				ps.add(p+"max_handshakes", "%d exceeds limits.max_connections (%d)", l.MaxHandshakes, l.MaxConnections)
			}
		}
	}
	if l.FDReserve < minFDReserve || l.FDReserve > maxConnectionsLimit {
		ps.add(p+"fd_reserve", "%d is out of range %d..%d", l.FDReserve, minFDReserve, maxConnectionsLimit)
	}
	if l.MaxConnectionsPerSource < 1 || l.MaxConnectionsPerSource > maxConnectionsLimit {
		ps.add(p+"max_connections_per_source", "%d is out of range 1..%d", l.MaxConnectionsPerSource, maxConnectionsLimit)
	}
	if l.MaxHandshakes < 1 || l.MaxHandshakes > maxConnectionsLimit {
		ps.add(p+"max_handshakes", "%d is out of range 1..%d", l.MaxHandshakes, maxConnectionsLimit)
	}
	if l.HandshakeTimeout < minHandshakeTimeout || l.HandshakeTimeout > maxHandshakeTimeout {
		ps.add(p+"handshake_timeout", "%s is out of range %s..%s", l.HandshakeTimeout, minHandshakeTimeout, maxHandshakeTimeout)
	}
	if l.MaxInflightPerIdentity < 1 || l.MaxInflightPerIdentity > maxInflightLimit {
		ps.add(p+"max_inflight_per_identity", "%d is out of range 1..%d", l.MaxInflightPerIdentity, maxInflightLimit)
	}
	if l.MaxHeaderBytes < minHeaderBytes || l.MaxHeaderBytes > maxHeaderBytesLimit {
		ps.add(p+"max_header_bytes", "%d is out of range %d..%d", l.MaxHeaderBytes, minHeaderBytes, maxHeaderBytesLimit)
	}
	if l.MemoryLimitBytes != 0 && l.MemoryLimitBytes < minMemoryLimitBytes {
		ps.add(p+"memory_limit_bytes", "%d is below %d (64 MiB), or 0 to derive it", l.MemoryLimitBytes, int64(minMemoryLimitBytes))
	}
	if l.MemoryRefusePercent < 50 || l.MemoryRefusePercent > 99 {
		ps.add(p+"memory_refuse_percent", "%d is out of range 50..99", l.MemoryRefusePercent)
	}
	k := l.Keepalive
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"min_time", k.MinTime}, {"max_connection_idle", k.MaxConnectionIdle}, {"max_connection_age", k.MaxConnectionAge},
		{"max_connection_age_grace", k.MaxConnectionAgeGrace}, {"time", k.Time}, {"timeout", k.Timeout},
	} {
		if d.v < minKeepaliveDuration {
			ps.add(p+"keepalive."+d.name, "%s is below %s", d.v, minKeepaliveDuration)
		}
	}
	g := l.Gateway
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"read_header_timeout", g.ReadHeaderTimeout}, {"read_timeout", g.ReadTimeout},
		{"write_timeout", g.WriteTimeout}, {"idle_timeout", g.IdleTimeout},
	} {
		if d.v < minGatewayTimeout {
			ps.add(p+"gateway."+d.name, "%s is below %s", d.v, minGatewayTimeout)
		}
	}
	if g.ReadTimeout >= minGatewayTimeout && g.ReadHeaderTimeout > g.ReadTimeout {
		ps.add(p+"gateway.read_header_timeout", "%s exceeds limits.gateway.read_timeout (%s)", g.ReadHeaderTimeout, g.ReadTimeout)
	}
	if g.MaxBodyBytes < minGatewayBodyBytes || g.MaxBodyBytes > maxGatewayBodyBytes {
		ps.add(p+"gateway.max_body_bytes", "%d is out of range %d..%d", g.MaxBodyBytes, minGatewayBodyBytes, maxGatewayBodyBytes)
	}
	h := l.HTTP
	if h.MaxConnections < minHTTPMaxConnections || h.MaxConnections > maxHTTPConnections {
		ps.add(p+"http.max_connections", "%d is out of range %d..%d", h.MaxConnections, minHTTPMaxConnections, maxHTTPConnections)
	}
	if h.MaxConnectionsPerSource < 1 || h.MaxConnectionsPerSource > h.MaxConnections {
		ps.add(p+"http.max_connections_per_source", "%d is out of range 1..limits.http.max_connections (%d)", h.MaxConnectionsPerSource, h.MaxConnections)
	}
}
