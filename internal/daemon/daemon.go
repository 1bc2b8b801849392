// Package daemon wires custodyd together: configuration, the HSM, the
// authenticated store, the key registry, the audit log, the gRPC server over
// mTLS and the HTTP endpoints for metrics and health.
//
// Invariants: nothing is served until the HSM is logged in, the store has
// been authenticated end to end and the audit log is open; shutdown stops
// accepting, lets in-flight requests finish, then closes the audit log
// (final checkpoint), the store and the HSM, in that order.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/gateway"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/server"
	"github.com/custodyhq/custody/internal/store"
)

// Labels of custodyd's own keys on the token.
const (
	AuditKeyLabel    = "custody:audit:v1"
	StoreMACKeyLabel = "custody:store-mac:v1"
)

// Options are run-time settings that are not in the config file.
type Options struct {
	Logger *slog.Logger
	// DestroyCheckInterval is how often due key destructions run (default 1m).
	DestroyCheckInterval time.Duration
	// ShutdownGrace bounds how long in-flight requests may take at shutdown.
	ShutdownGrace time.Duration
	// Pprof serves /debug/pprof on the HTTP listener (loopback only).
	Pprof bool
	// Now is the clock (tests).
	Now func() time.Time
	// GovernanceInterval is how often time-locked proposals are executed and
	// budget state is persisted (default 1s).
	GovernanceInterval time.Duration
	// AuditNoGroupCommit fsyncs every audit record on its own (benchmarks only).
	AuditNoGroupCommit bool
}

// Daemon is a running custodyd.
type Daemon struct {
	cfg     *config.Config
	opts    Options
	log     *slog.Logger
	HSM     *hsm.Module
	Store   store.Store
	Keys    *keys.Registry
	Audit   *audit.Log
	Server  *server.Server
	Gov     *server.Governance
	AuditPK any // the audit key's public key

	grpc     *grpc.Server
	http     *http.Server
	grpcLis  net.Listener
	httpLis  net.Listener
	stop     context.CancelFunc
	wg       sync.WaitGroup
	closeErr error
	once     sync.Once

	// The REST/JSON gateway (nil unless gateway_listen is set): its HTTPS
	// listener, and the in-process listener on which the same grpc.Server
	// serves the gateway's forwarded requests.
	gwLis      net.Listener
	gwInternal *gateway.Listener
	gw         *gateway.Gateway
}

// Start opens everything the config names and starts serving. It returns
// once both listeners accept connections.
func Start(ctx context.Context, cfg *config.Config, opts Options) (_ *Daemon, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DestroyCheckInterval <= 0 {
		opts.DestroyCheckInterval = time.Minute
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 20 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	d := &Daemon{cfg: cfg, opts: opts, log: opts.Logger}
	defer func() {
		if err != nil {
			for _, l := range []net.Listener{d.grpcLis, d.httpLis, d.gwLis} {
				if l != nil {
					l.Close()
				}
			}
			d.closeAll()
		}
	}()

	pin, err := cfg.HSM.ReadPIN(ctx)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	d.HSM, err = hsm.Open(ctx, hsm.Config{URI: cfg.HSM.URI, PIN: pin, MaxSessions: cfg.HSM.MaxSessions, Logger: d.log,
		Observe:                    server.HSMObserver(reg),
		RecycleAfterSessionObjects: recycleAfter(cfg.HSM, d.log)})
	clear(pin)
	if err != nil {
		return nil, fmt.Errorf("hsm: %w", err)
	}
	if missing := d.HSM.Missing(); len(missing) > 0 {
		d.log.Warn("token lacks mechanisms; some key purposes will be unavailable", "missing", missing)
	}

	raw, err := store.OpenBolt(cfg.Store.Path, store.BoltOptions{})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	d.Store = raw
	macKey, err := d.ownKey(ctx, hsm.KindHMACSHA256, StoreMACKeyLabel, raw)
	if err != nil {
		return nil, fmt.Errorf("store authentication key: %w", err)
	}
	d.Store = store.Authenticated(raw, &hsmSealer{m: d.HSM, k: macKey})

	auditKey, err := d.ownKey(ctx, hsm.KindAuditP256, AuditKeyLabel, raw)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	signer, err := d.HSM.Signer(ctx, auditKey)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	d.AuditPK = signer.Public()
	if err := os.MkdirAll(cfg.Audit.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	var sink audit.AnchorSink
	switch {
	case cfg.Audit.AnchorFile != "":
		sink = &audit.FileSink{Path: cfg.Audit.AnchorFile}
	case cfg.Audit.AnchorURL != "":
		sink = &audit.HTTPSink{URL: cfg.Audit.AnchorURL}
	}
	d.Audit, err = audit.Open(ctx, cfg.Audit.Dir, signer, audit.Options{
		SegmentSize: cfg.Audit.SegmentBytes, CheckpointEvery: uint64(cfg.Audit.CheckpointEvery),
		CheckpointInterval: cfg.Audit.CheckpointInterval, Logger: d.log, Sink: sink,
		DisableGroupCommit: opts.AuditNoGroupCommit,
	})
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}

	d.Keys, err = keys.OpenRegistry(ctx, d.Store, d.HSM, keys.RegistryOptions{
		Now: opts.Now, Logger: d.log,
		Destroy: keys.DestroyWindow{Min: cfg.Keys.DestroyWaitMin, Max: 365 * 24 * time.Hour},
	})
	if err != nil {
		if errors.Is(err, store.ErrTampered) {
			return nil, fmt.Errorf("store %s failed authentication (edited outside custodyd?); refusing to serve: %w", cfg.Store.Path, err)
		}
		return nil, fmt.Errorf("keys: %w", err)
	}

	pol, roles, err := PolicyFromConfig(cfg)
	if err != nil {
		return nil, err
	}
	lim, err := LimiterFromConfig(cfg, opts.Now())
	if err != nil {
		return nil, err
	}
	if !cfg.Dev && (len(cfg.Grants) > 0 || len(cfg.Budgets) > 0) {
		d.log.Warn("config grants and budgets are ignored outside dev mode: they come from the key ceremony and quorum proposals",
			"grants", len(cfg.Grants), "budgets", len(cfg.Budgets))
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := server.NewMetrics(reg, d.HSM, func() *keys.Registry { return d.Keys })
	d.Server = server.New(server.Options{
		HSM: d.HSM, Keys: d.Keys, Policy: pol, Roles: roles, Limiter: lim, Audit: d.Audit, Metrics: metrics,
		Logger: d.log, Now: opts.Now,
		Limits: server.Limits{MaxPayload: cfg.Keys.MaxPayloadBytes, MaxBatch: cfg.Keys.MaxBatch, DestroyWaitDefault: cfg.Keys.DestroyWaitDefault},
	})

	if err := d.openGovernance(ctx, reg, pol, signer); err != nil {
		return nil, fmt.Errorf("governance: %w", err)
	}

	tlsCfg, err := pki.ServerTLSConfig(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	creds := credentials.NewTLS(tlsCfg)
	if cfg.GatewayListen != "" {
		// The gateway's forwarded requests go through this same server and
		// its interceptors; only its in-process connections may carry a
		// forwarded identity.
		d.gwInternal = gateway.NewListener()
		creds = gateway.ServerCredentials(creds)
	}
	d.grpc = grpc.NewServer(append(d.Server.ServerOptions(),
		grpc.Creds(creds),
		// A batch of 100 items of 64 KiB with contexts fits in 16 MiB; nothing
		// larger is accepted.
		grpc.MaxRecvMsgSize(16<<20),
		// Bound what one connection can hold in flight, so a hostile client
		// cannot queue unbounded work or memory on one connection.
		grpc.MaxConcurrentStreams(128),
	)...)
	d.Server.Register(d.grpc)
	d.Server.SetDataKeyStore(d.Store)
	d.Server.RegisterAuditService(d.grpc, server.NewAuditService(d.Audit, signer))
	reg.MustRegister(d.Audit.Collector())

	if d.grpcLis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	if d.httpLis, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.HTTPListen, err)
	}
	if cfg.GatewayListen != "" {
		if d.gwLis, err = net.Listen("tcp", cfg.GatewayListen); err != nil {
			return nil, fmt.Errorf("listen %s: %w", cfg.GatewayListen, err)
		}
		if d.gw, err = gateway.New(ctx, d.gwInternal, tlsCfg, gateway.Options{Logger: d.log}); err != nil {
			return nil, err
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", d.readyz)
	if opts.Pprof {
		if !isLoopback(d.httpLis.Addr()) {
			return nil, fmt.Errorf("--pprof needs http_listen on a loopback address, not %s", d.httpLis.Addr())
		}
		runtime.SetMutexProfileFraction(100) // sample 1% of contention events for /debug/pprof/mutex
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	d.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	if cfg.Dev {
		if err := d.EnsureDevKey(ctx); err != nil {
			return nil, fmt.Errorf("dev key: %w", err)
		}
	}

	runCtx, stop := context.WithCancel(context.Background())
	d.stop = stop
	d.wg.Add(3)
	go func() { defer d.wg.Done(); _ = d.grpc.Serve(d.grpcLis) }()
	go func() { defer d.wg.Done(); _ = d.http.Serve(d.httpLis) }()
	go func() { defer d.wg.Done(); d.destroyLoop(runCtx) }()
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.governanceLoop(runCtx) }()
	if d.gw != nil {
		d.wg.Add(2)
		go func() { defer d.wg.Done(); _ = d.grpc.Serve(d.gwInternal) }()
		go func() { defer d.wg.Done(); _ = d.gw.Serve(d.gwLis) }()
	}
	d.Server.Health().SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	d.log.Info("custodyd serving", "grpc", d.grpcLis.Addr().String(), "http", d.httpLis.Addr().String(), "gateway", d.GatewayAddr(),
		"keys", d.Keys.Len(), "token", cfg.HSM.String())
	return d, nil
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// ownKey finds one of custodyd's own keys by label, creating it on first
// start. A store that already holds data but whose key is missing means the
// token was swapped or the key deleted: refuse (fail closed).
func (d *Daemon) ownKey(ctx context.Context, kind hsm.Kind, label string, raw store.Store) (hsm.Key, error) {
	k, err := d.HSM.FindByLabel(ctx, kind, label)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, hsm.ErrNotFound) {
		return hsm.Key{}, err
	}
	if rev, rerr := raw.Revision(ctx); rerr != nil || rev > 0 {
		return hsm.Key{}, fmt.Errorf("%q is missing from the token but the store already holds data; refusing to start", label)
	}
	k, _, err = d.HSM.CreateKey(ctx, kind, label)
	if err != nil {
		return hsm.Key{}, err
	}
	d.log.Info("created key on the token", "label", label, "kind", kind.String())
	return k, nil
}

// PolicyFromConfig builds the authorisation policy and role table from the
// identities and grants in the config.
func PolicyFromConfig(cfg *config.Config) (*policy.Policy, map[string]policy.Role, error) {
	spec := policy.Spec{}
	roles := map[string]policy.Role{}
	byName := map[string]string{}
	for _, id := range cfg.Identities {
		r := policy.Role(id.Role)
		spec.Identities = append(spec.Identities, policy.Identity{ID: id.ID(), Roles: []policy.Role{r}})
		roles[id.ID()] = r
		byName[id.Name] = id.ID()
	}
	for i, g := range cfg.Grants {
		ops := make([]policy.Op, len(g.Operations))
		for j, op := range g.Operations {
			ops[j] = policy.Op(op)
		}
		for _, k := range g.Keys {
			spec.Grants = append(spec.Grants, policy.Grant{
				ID: fmt.Sprintf("config-%d-%s", i, k), Identity: byName[g.Identity], Key: k, Operations: ops,
				ContextMatch: g.ContextMatch, RecipientKeys: g.RecipientKeyDigests(), AllowPlaintext: g.AllowPlaintext,
			})
		}
	}
	p, err := policy.New(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("grants: %w", err)
	}
	return p, roles, nil
}

// LimiterFromConfig builds the budgets of a dev vault before its key
// ceremony. Outside dev mode, or with no budgets configured, it returns nil:
// a governed vault's budgets come from the ceremony and proposals.
func LimiterFromConfig(cfg *config.Config, now time.Time) (*policy.Limiter, error) {
	if !cfg.Dev || len(cfg.Budgets) == 0 {
		return nil, nil
	}
	rule := policy.FreezeRule{Refusals: cfg.Governance.Freeze.Refusals, Within: cfg.Governance.Freeze.Within}
	lim, err := policy.NewLimiter(rule)
	if err != nil {
		return nil, fmt.Errorf("budgets: %w", err)
	}
	ids := map[string]string{}
	for _, id := range cfg.Identities {
		ids[id.Name] = id.ID()
	}
	for i, b := range cfg.Budgets {
		pb := policy.Budget{Rate: b.Rate, Burst: b.Burst, Volume: b.Volume, Window: b.Window}
		if err := lim.SetBudget(ids[b.Identity], b.Key, pb, now); err != nil {
			return nil, fmt.Errorf("budgets[%d]: %w", i, err)
		}
	}
	return lim, nil
}

func (d *Daemon) readyz(w http.ResponseWriter, r *http.Request) {
	var problems []string
	if st := d.HSM.State(); st != hsm.StateReady {
		problems = append(problems, "hsm "+st.String())
	}
	if _, err := d.Store.Revision(r.Context()); err != nil {
		problems = append(problems, "store: "+err.Error())
	}
	if err := d.Audit.Healthy(); err != nil {
		problems = append(problems, "audit: "+err.Error())
	}
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, p := range problems {
			fmt.Fprintln(w, p)
		}
		return
	}
	fmt.Fprintln(w, "ready")
}

func (d *Daemon) destroyLoop(ctx context.Context) {
	t := time.NewTicker(d.opts.DestroyCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := d.Keys.DestroyDue(ctx); err != nil {
				d.log.Error("scheduled key destruction failed", "err", err)
			} else if n > 0 {
				d.log.Info("destroyed key versions", "count", n)
			}
		}
	}
}

// GRPCAddr is the address the gRPC listener is bound to.
func (d *Daemon) GRPCAddr() string { return d.grpcLis.Addr().String() }

// HTTPAddr is the address of the metrics/health listener.
func (d *Daemon) HTTPAddr() string { return d.httpLis.Addr().String() }

// GatewayAddr is the address of the REST/JSON gateway, or "" when
// gateway_listen is not set.
func (d *Daemon) GatewayAddr() string {
	if d.gwLis == nil {
		return ""
	}
	return d.gwLis.Addr().String()
}

// Shutdown stops accepting requests, waits (up to the grace period) for
// in-flight ones, then closes the audit log, store and HSM.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.once.Do(func() {
		d.Server.Health().Shutdown()
		if d.gw != nil {
			// Let in-flight REST requests finish through the gRPC server
			// before it stops.
			gctx, cancel := context.WithTimeout(ctx, d.opts.ShutdownGrace)
			_ = d.gw.Shutdown(gctx)
			cancel()
		}
		done := make(chan struct{})
		go func() { d.grpc.GracefulStop(); close(done) }()
		grace := time.NewTimer(d.opts.ShutdownGrace)
		select {
		case <-done:
		case <-grace.C:
			d.grpc.Stop()
		case <-ctx.Done():
			d.grpc.Stop()
		}
		grace.Stop()
		_ = d.http.Shutdown(ctx)
		d.stop()
		d.wg.Wait()
		d.closeAll()
	})
	return d.closeErr
}

func (d *Daemon) closeAll() {
	var errs []error
	if d.Audit != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errs = append(errs, d.Audit.Close(ctx))
		cancel()
	}
	if d.Store != nil {
		errs = append(errs, d.Store.Close())
	}
	if d.HSM != nil {
		errs = append(errs, d.HSM.Close())
	}
	d.closeErr = errors.Join(errs...)
}
