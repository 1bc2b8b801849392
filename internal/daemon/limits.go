package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/custodyhq/custody/internal/admission"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/gateway"
	"github.com/custodyhq/custody/internal/netlimit"
)

// resourceLimits is what Start derives from the limits section and the
// host: the connection budgets of the listeners, request admission and the
// memory limit (see docs/operations.md, "Capacity").
type resourceLimits struct {
	cfg       config.LimitsConfig
	fdLimit   uint64
	clients   *netlimit.Budget // the gRPC and gateway listeners share it
	http      *netlimit.Budget // the metrics/health listener's own
	admission *admission.Limiter
	memory    *admission.MemoryGuard // nil when no limit could be set

	memLimit     int64
	memSource    string
	prevMemLimit int64
	restored     bool
}

// setupLimits raises the descriptor limit, derives the connection caps
// from it, sets the soft memory limit and builds the budgets and the
// admission limiter, registering their metrics on reg.
func setupLimits(cfg config.LimitsConfig, reg prometheus.Registerer, log *slog.Logger) (*resourceLimits, error) {
	r := &resourceLimits{cfg: cfg, prevMemLimit: -1}
	fds, err := raiseNoFile()
	if err != nil {
		return nil, fmt.Errorf("descriptor limit: %w", err)
	}
	r.fdLimit = fds
	maxConns, err := clientConnCap(cfg, fds)
	if err != nil {
		return nil, err
	}
	perSource, handshakes := cfg.MaxConnectionsPerSource, cfg.MaxHandshakes
	if cfg.MaxConnections == 0 { // derived: keep the other caps within it
		perSource, handshakes = min(perSource, maxConns), min(handshakes, maxConns)
	}

	r.setMemoryLimit(cfg)
	if r.memLimit > 0 {
		r.memory = admission.NewMemoryGuard(r.memLimit, cfg.MemoryRefusePercent)
	} else {
		log.Warn("no memory limit: none configured and the host's memory could not be read; requests are not refused under memory pressure")
	}
	if r.admission, err = admission.New(admission.Options{
		MaxPerIdentity: cfg.MaxInflightPerIdentity, Memory: r.memory, Registerer: reg,
	}); err != nil {
		return nil, err
	}

	m := netlimit.NewMetrics(reg)
	clientLimits := netlimit.Limits{
		MaxConns: maxConns, MaxPerSource: perSource, MaxPending: handshakes,
		PendingTimeout: cfg.HandshakeTimeout, Logger: log,
	}
	if g := r.memory; g != nil {
		// New connections cost buffers too: none are taken under pressure.
		clientLimits.Admit = func() bool { return !g.Pressure() }
	}
	if r.clients, err = netlimit.NewBudget(clientLimits, m); err != nil {
		return nil, err
	}
	if r.http, err = netlimit.NewBudget(netlimit.Limits{
		MaxConns: cfg.HTTP.MaxConnections, MaxPerSource: cfg.HTTP.MaxConnectionsPerSource,
		MaxPending: cfg.HTTP.MaxConnections, PendingTimeout: cfg.HandshakeTimeout, Logger: log,
	}, m); err != nil {
		return nil, err
	}
	log.Info("resource limits", "fd_limit", fds, "max_connections", maxConns, "max_per_source", perSource,
		"max_handshakes", handshakes, "handshake_timeout", cfg.HandshakeTimeout,
		"max_inflight_per_identity", cfg.MaxInflightPerIdentity, "memory_limit", r.memLimit, "memory_limit_source", r.memSource)
	return r, nil
}

// raiseNoFile raises RLIMIT_NOFILE's soft limit to its hard limit (the Go
// runtime does this too on Linux; being explicit keeps it true wherever
// custodyd is started from) and returns the soft limit in force.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = want.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
			rl = want
		}
	}
	return rl.Cur, nil
}

// clientConnCap is the cap on gRPC plus gateway connections: configured,
// or derived as the descriptor limit minus the reserve and the HTTP
// listener's budget. A configured cap above that is refused, because it
// would let clients exhaust the descriptors the store, audit log and HSM
// need.
func clientConnCap(cfg config.LimitsConfig, fdLimit uint64) (int, error) {
	const minConns = 16
	avail := int64(min(fdLimit, 1<<40)) - int64(cfg.FDReserve) - int64(cfg.HTTP.MaxConnections)
	explain := fmt.Sprintf("RLIMIT_NOFILE %d - limits.fd_reserve %d - limits.http.max_connections %d", fdLimit, cfg.FDReserve, cfg.HTTP.MaxConnections)
	switch {
	case avail < minConns:
		return 0, fmt.Errorf("%w: limits.fd_reserve: %s leaves %d descriptors for client connections (need %d); raise the descriptor limit (systemd LimitNOFILE=) or lower the reserve",
			config.ErrInvalid, explain, avail, minConns)
	case cfg.MaxConnections == 0:
		return int(min(avail, 10_000_000)), nil
	case int64(cfg.MaxConnections) > avail:
		return 0, fmt.Errorf("%w: limits.max_connections: %d exceeds the %d descriptors left for client connections (%s); raise the descriptor limit (systemd LimitNOFILE=) or lower it",
			config.ErrInvalid, cfg.MaxConnections, avail, explain)
	}
	return cfg.MaxConnections, nil
}

// setMemoryLimit applies the soft memory limit: configured, else
// GOMEMLIMIT as the runtime already read it, else derived from the host.
func (r *resourceLimits) setMemoryLimit(cfg config.LimitsConfig) {
	switch {
	case cfg.MemoryLimitBytes > 0:
		r.memLimit, r.memSource = cfg.MemoryLimitBytes, "limits.memory_limit_bytes"
	case os.Getenv("GOMEMLIMIT") != "":
		r.memLimit, r.memSource = debug.SetMemoryLimit(-1), "GOMEMLIMIT"
		return
	default:
		r.memLimit, r.memSource = admission.HostMemoryLimit()
	}
	if r.memLimit > 0 {
		r.prevMemLimit = debug.SetMemoryLimit(r.memLimit)
	}
}

// restore puts back the memory limit the process had before Start (for
// in-process restarts and tests).
func (r *resourceLimits) restore() {
	if r == nil || r.restored {
		return
	}
	r.restored = true
	if r.prevMemLimit >= 0 {
		debug.SetMemoryLimit(r.prevMemLimit)
	}
}

// grpcOptions are the gRPC server's connection limits: a deadline on the
// TLS and HTTP/2 handshakes, keepalive enforcement, connection ages and a
// bound on metadata.
func (r *resourceLimits) grpcOptions() []grpc.ServerOption {
	k := r.cfg.Keepalive
	return []grpc.ServerOption{
		// The budget closes a connection whose TLS handshake outlives
		// handshake_timeout (and counts it as a timeout); gRPC's own
		// deadline, a second later, also covers the HTTP/2 preface.
		grpc.ConnectionTimeout(r.cfg.HandshakeTimeout + time.Second),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: k.MinTime, PermitWithoutStream: k.PermitWithoutStream}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: k.MaxConnectionIdle, MaxConnectionAge: k.MaxConnectionAge,
			MaxConnectionAgeGrace: k.MaxConnectionAgeGrace, Time: k.Time, Timeout: k.Timeout,
		}),
		grpc.MaxHeaderListSize(uint32(r.cfg.MaxHeaderBytes)),
	}
}

// httpServer is the metrics/health server: bounded headers and times, and
// its connections established at their first request.
func (r *resourceLimits) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           netlimit.EstablishOnRequest(h),
		ConnContext:       netlimit.ConnContext,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    r.cfg.MaxHeaderBytes,
	}
}

// errEvicted: the connection's handshake finished after the budget had
// already closed it (timeout or eviction).
var errEvicted = errors.New("connection closed by the connection budget during its handshake")

// budgetCreds marks a connection established in its budget as soon as the
// TLS handshake has succeeded.
type budgetCreds struct {
	credentials.TransportCredentials
}

func (c budgetCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	if _, counted := raw.(*netlimit.Conn); counted && !netlimit.Established(raw) {
		conn.Close()
		return nil, nil, errEvicted
	}
	return conn, info, nil
}

func (c budgetCreds) Clone() credentials.TransportCredentials {
	return budgetCreds{c.TransportCredentials.Clone()}
}

// gatewayLimits are the REST/JSON gateway's HTTP limits.
func (r *resourceLimits) gatewayLimits() gateway.Limits {
	g := r.cfg.Gateway
	return gateway.Limits{
		ReadHeaderTimeout: g.ReadHeaderTimeout, ReadTimeout: g.ReadTimeout, WriteTimeout: g.WriteTimeout,
		IdleTimeout: g.IdleTimeout, MaxHeaderBytes: r.cfg.MaxHeaderBytes, MaxBodyBytes: g.MaxBodyBytes, MaxStreams: 128,
	}
}
