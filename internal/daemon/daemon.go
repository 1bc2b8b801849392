// Package daemon wires custodyd together: configuration, the HSM, the
// authenticated store, the key registry, the audit log, the gRPC server over
// mTLS and the HTTP endpoints for metrics and health.
//
// A start has two phases. open binds every listener and serves at once,
// sealed: health, /readyz (503 "sealed"), /metrics and the seal service
// answer, and every other call is UNAVAILABLE "sealed". complete runs once
// the HSM PIN is known — from pin_file/pin_env at once, or from M officers'
// shares (internal/sealsvc), or from the installer at the key ceremony — and
// logs in, takes the token's instance lease, opens the authenticated store,
// the audit log, the key registry and governance, and binds the services.
//
// Invariants: nothing but health, readiness, metrics and the seal service is
// served until the HSM is logged in, this process holds the token's lease,
// the store has been authenticated end to end and the audit log is open;
// shutdown stops accepting, lets in-flight requests finish, then closes the
// audit log (final checkpoint), releases the lease, and closes the store and
// the HSM, in that order.
package daemon

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/auditmark"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/gateway"
	"github.com/custodyhq/custody/internal/governance"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/keys/hsmtoken"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/sealsvc"
	"github.com/custodyhq/custody/internal/secmem"
	"github.com/custodyhq/custody/internal/server"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/tokenlock"
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
	// Hardening is what custodyd's main did to the process (secmem.Harden),
	// exported as metrics; nil when it did nothing (tests, embedding).
	Hardening *secmem.Hardening
}

// Daemon is a running custodyd. HSM, Store, Keys, Server and Gov are nil
// while it is sealed; Audit is nil while sealed before the key ceremony.
type Daemon struct {
	cfg     *config.Config
	opts    Options
	log     *slog.Logger
	HSM     *hsm.Module
	Store   *store.AuthStore
	Keys    *keys.Registry
	Audit   *audit.Log
	Server  *server.Server
	Gov     *governance.Governance
	AuditPK any // the audit key's public key
	// Seal is the seal state and SealService (sealed start).
	Seal *sealsvc.Service

	grpc     *grpc.Server
	http     *http.Server
	grpcLis  net.Listener
	httpLis  net.Listener
	stop     context.CancelFunc
	runCtx   context.Context
	wg       sync.WaitGroup
	closeErr error
	once     sync.Once

	// Sealed start (seal.go): the raw store opened at start, the health
	// service, the late binding of services, the chained interceptors of
	// the unsealed server, the audit key before login, the token lease.
	raw       store.Store
	anchor    atomic.Pointer[store.AuthStore] // the store checkpoints record the revision of
	health    *health.Server
	binder    *binder
	inner     atomic.Pointer[interceptors]
	lateAudit *lateSigner
	lease     *tokenlock.Lock
	reg       *prometheus.Registry
	unsealReg atomic.Pointer[prometheus.Registry]
	// completeMu serialises complete; completed is set once it succeeds.
	completeMu sync.Mutex
	completed  atomic.Bool

	// The REST/JSON gateway (nil unless gateway_listen is set): its HTTPS
	// listener, and the in-process listener on which the same grpc.Server
	// serves the gateway's forwarded requests.
	gwLis      net.Listener
	gwInternal *gateway.Listener
	gw         *gateway.Gateway

	// limits: connection budgets, admission, memory limit (limits.go).
	limits *resourceLimits
	// gate refuses requests while a shared (etcd) store is unreachable;
	// nil with bbolt.
	gate *storeGate
	// mark keeps the audit high-water mark on the token (rollback.go).
	mark *auditmark.Writer
	// markOnToken is false when the token keeps no data objects (NSS).
	markOnToken atomic.Bool
	// prefixMark is the token's mark read at start, whose earlier records
	// verifyAuditPrefix checks in the background (nil: none to check).
	prefixMark *auditmark.Mark
	// openedHead is the audit log's last record when it was opened.
	openedHead uint64
	// replica: the scheduler election and following the store (replica.go).
	replica replicaState
}

// Start opens everything the config names and starts serving. It returns
// once the listeners accept connections: unsealed when the config names a
// PIN source, sealed otherwise (officers unseal it through SealService).
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
			d.abort()
		}
	}()
	if err := d.open(ctx); err != nil {
		return nil, err
	}
	if cfg.HSM.Sealed() {
		if rec := d.Seal.Record(); rec != nil {
			d.log.Warn("custodyd is SEALED: it serves nothing until officers unseal it (custodyctl unseal)",
				"shares_needed", rec.Threshold, "of", len(rec.Shares), "unseal_key_fingerprint", d.Seal.UnsealKeyFingerprint())
		} else {
			d.log.Warn("custodyd is sealed, AWAITING ITS KEY CEREMONY: run custodyctl ceremony init (it asks for the installer's HSM PIN)",
				"unseal_key_fingerprint", d.Seal.UnsealKeyFingerprint())
		}
		return d, nil
	}
	pin, err := cfg.HSM.ReadPIN(ctx)
	if err != nil {
		return nil, err
	}
	err = d.complete(ctx, pin)
	clear(pin)
	if err != nil {
		return nil, err
	}
	if !cfg.Dev {
		d.log.Warn("the HSM PIN is read from "+cfg.HSM.PINSourceName()+" on this host: root here can use the HSM without custodyd; a sealed start (no pin_file/pin_env) splits it among the officers instead",
			"pin_source", cfg.HSM.PINSourceName())
	}
	return d, nil
}

// open is the first phase of a start: the metrics registry, the raw store,
// the seal state, the audit log when its key is known, and every listener,
// serving sealed.
func (d *Daemon) open(ctx context.Context) (err error) {
	cfg := d.cfg
	d.reg = prometheus.NewRegistry()
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerHardening(d.reg, d.opts.Hardening)
	// Limits first (limits.go): a descriptor budget that cannot work stops
	// start-up before the store, the seal and the listeners are opened.
	if d.limits, err = setupLimits(cfg.Limits, d.reg, d.log); err != nil {
		return err
	}
	raw, err := openStore(ctx, cfg.Store)
	if err != nil {
		return prefixed("store", err)
	}
	d.raw = raw
	if cfg.Store.Backend == config.BackendEtcd {
		d.gate = newStoreGate(raw, "etcd", d.log)
	}
	// A config that disagrees with the trust the key ceremony fixed stops
	// start-up here, before officers are asked to unseal (gov.go).
	if err := d.checkTrustSealed(ctx); err != nil {
		return err
	}
	d.mark = newMarkWriter(raw, cfg.ReplicaID, d.log)
	if err := d.openSeal(ctx); err != nil {
		return err
	}

	tlsCfg, err := pki.ServerTLSConfig(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	// budgetCreds: a connection stops counting as a pending handshake in
	// its connection budget once its TLS handshake succeeds (limits.go).
	var creds credentials.TransportCredentials = budgetCreds{credentials.NewTLS(tlsCfg)}
	if cfg.GatewayListen != "" {
		// The gateway's forwarded requests go through this same server and
		// its interceptors; only its in-process connections may carry a
		// forwarded identity.
		d.gwInternal = gateway.NewListener()
		creds = gateway.ServerCredentials(creds)
	}
	d.grpc = grpc.NewServer(append([]grpc.ServerOption{
		// A request that does not decode still reaches the interceptors, so
		// it is audited and answered INVALID_ARGUMENT (see internal/server).
		grpc.ForceServerCodecV2(server.Codec()),
		grpc.ChainUnaryInterceptor(d.gateUnary),
		grpc.ChainStreamInterceptor(d.gateStream),
		grpc.Creds(creds),
		// A batch of 100 items of 64 KiB with contexts fits in 16 MiB; nothing
		// larger is accepted.
		grpc.MaxRecvMsgSize(16 << 20),
		// Bound what one connection can hold in flight, so a hostile client
		// cannot queue unbounded work or memory on one connection.
		grpc.MaxConcurrentStreams(128),
		// Requests run on a pool of goroutines that keep their grown
		// stacks, instead of one new goroutine per request whose stack
		// grows (copied) on every request; gRPC starts a goroutine as
		// before when all of them are busy.
		grpc.NumStreamWorkers(streamWorkers()),
	}, d.limits.grpcOptions()...)...)
	d.declareServices()

	if d.grpcLis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	d.grpcLis = d.limits.clients.Listen(d.grpcLis, "grpc")
	if d.httpLis, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
		return fmt.Errorf("listen %s: %w", cfg.HTTPListen, err)
	}
	d.httpLis = d.limits.http.Listen(d.httpLis, "http")
	if cfg.GatewayListen != "" {
		if d.gwLis, err = net.Listen("tcp", cfg.GatewayListen); err != nil {
			return fmt.Errorf("listen %s: %w", cfg.GatewayListen, err)
		}
		d.gwLis = d.limits.clients.Listen(d.gwLis, "gateway")
		if d.gw, err = gateway.New(ctx, d.gwInternal, tlsCfg, gateway.Options{Logger: d.log, Limits: d.limits.gatewayLimits()}); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.GathererFunc(d.gather), promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", d.readyz)
	if d.opts.Pprof {
		if !isLoopback(d.httpLis.Addr()) {
			return fmt.Errorf("--pprof needs http_listen on a loopback address, not %s", d.httpLis.Addr())
		}
		runtime.SetMutexProfileFraction(100) // sample 1% of contention events for /debug/pprof/mutex
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	d.http = d.limits.httpServer(mux)

	d.runCtx, d.stop = context.WithCancel(context.Background())
	d.wg.Add(3)
	go func() { defer d.wg.Done(); _ = d.grpc.Serve(d.grpcLis) }()
	go func() { defer d.wg.Done(); _ = d.http.Serve(d.httpLis) }()
	go func() { defer d.wg.Done(); d.Seal.ExpireLoop(d.runCtx, sealExpireInterval) }()
	if d.gw != nil {
		d.wg.Add(2)
		go func() { defer d.wg.Done(); _ = d.grpc.Serve(d.gwInternal) }()
		go func() { defer d.wg.Done(); _ = d.gw.Serve(d.gwLis) }()
	}
	return nil
}

// complete is the second phase of a start, run once the PIN is known: it
// logs in, takes the token's lease, authenticates the store, opens the
// audit log (or arms its signer), the registry and governance, and binds
// the services. pin is not kept (the HSM module keeps its own masked copy
// for re-login). On failure the daemon stays sealed and a later attempt
// starts over.
func (d *Daemon) complete(ctx context.Context, pin []byte) (err error) {
	d.completeMu.Lock()
	defer d.completeMu.Unlock()
	if d.completed.Load() {
		return errors.New("already unsealed")
	}
	cfg := d.cfg
	reg := prometheus.NewRegistry()
	var auditOpened bool
	defer func() {
		if err != nil {
			d.undoComplete(auditOpened)
		}
	}()

	deny, err := cfg.HSM.Mechanisms()
	if err != nil {
		return fmt.Errorf("hsm.deny_mechanisms: %w", err)
	}
	d.HSM, err = hsm.Open(ctx, hsm.Config{URI: cfg.HSM.URI, PIN: pin, MaxSessions: cfg.HSM.MaxSessions, Logger: d.log,
		Observe: server.HSMObserver(reg), Profile: cfg.HSM.Profile, InitArgs: cfg.HSM.InitArgs, DenyMechanisms: deny,
		RecycleAfterSessionObjects: cfg.HSM.RecycleAfterSessionObjects})
	if err != nil {
		return prefixed("hsm", err)
	}
	if missing := d.HSM.Missing(); len(missing) > 0 {
		d.log.Warn("token lacks mechanisms; some key purposes will be unavailable", "missing", missing)
	}
	if err := requireCustody(cfg, d.HSM.Capabilities()); err != nil {
		return err
	}
	if cfg.Dev {
		if err := refuseDevOnProduction(ctx, d.HSM); err != nil {
			return err
		}
	}
	if err := d.takeLease(ctx); err != nil {
		return err
	}

	macKey, err := d.ownKey(ctx, hsm.KindHMACSHA256, StoreMACKeyLabel, d.raw)
	if err != nil {
		return fmt.Errorf("store authentication key: %w", err)
	}
	d.Store, err = store.Authenticated(ctx, d.raw, &hsmSealer{m: d.HSM, k: macKey}, store.AuthOptions{Unanchored: unanchored})
	if err != nil {
		return storeRefusal(cfg.Store.String(), err)
	}
	d.anchor.Store(d.Store)
	digester, err := contextDigester(ctx, d.HSM, macKey)
	if err != nil {
		return fmt.Errorf("hsm: %w", err)
	}

	auditKey, err := d.ownKey(ctx, hsm.KindAuditP256, AuditKeyLabel, d.raw)
	if err != nil {
		return fmt.Errorf("audit key: %w", err)
	}
	signer, err := d.HSM.Signer(ctx, auditKey)
	if err != nil {
		return fmt.Errorf("audit key: %w", err)
	}
	d.AuditPK = signer.Public()
	// The audit log signs nothing until the directory and the store have
	// been compared with the token's audit mark: a rewritten log must not
	// get a checkpoint of this key over it.
	late := d.lateAudit
	if d.Audit == nil {
		late = &lateSigner{pub: signer.Public()}
		if d.Audit, err = d.openAudit(ctx, late); err != nil {
			return err
		}
		auditOpened = true
	}
	if err := d.Seal.SetAuditor(ctx, d.Audit); err != nil {
		return err
	}
	if cp, ok := d.Audit.LatestCheckpoint(); ok && cp.StoreRevision > d.Store.Anchor().Revision {
		return fmt.Errorf("store %s is older than the audit log: its revision is %d but audit checkpoint %d (%s) recorded revision %d; "+
			"it was rolled back or restored from a backup: refusing to serve", cfg.Store.String(), d.Store.Anchor().Revision,
			cp.Seq, cp.Time.Format(time.RFC3339), cp.StoreRevision)
	}
	if err := d.checkAuditMark(ctx, signer.Public()); err != nil {
		return err
	}
	if rev := d.Audit.OpenedStoreRevision(); rev > d.Store.Anchor().Revision {
		// Every record carries the store revision it was written at: a
		// store behind the log's last record was put back after it, even
		// if the token's mark and checkpoints.log were put back with it.
		return fmt.Errorf("store %s is older than the audit log: its revision is %d but the log's last record (%d) was written at revision %d; "+
			"it was rolled back or restored from a backup: refusing to serve", cfg.Store.String(), d.Store.Anchor().Revision, d.openedHead, rev)
	}
	if err := d.recordUnattested(ctx); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if err := late.arm(signer); err != nil {
		return err
	}
	// A checkpoint now: the token's mark is brought up to this start at
	// once (the records of the sealed phase included).
	if _, err := d.Audit.Checkpoint(ctx); err != nil && !errors.Is(err, audit.ErrNoRecords) {
		d.log.Warn("audit: the start-up checkpoint failed", "err", err)
	}

	d.Keys, err = keys.OpenRegistry(ctx, d.Store, hsmtoken.Token{M: d.HSM}, keys.RegistryOptions{
		Now: d.opts.Now, Logger: d.log,
		Destroy: keys.DestroyWindow{Min: cfg.Keys.DestroyWaitMin, Max: 365 * 24 * time.Hour},
		Record:  d.recordDestroy,
	})
	if err != nil {
		return fmt.Errorf("keys: %w", storeRefusal(cfg.Store.String(), err))
	}
	if !cfg.Dev && (len(cfg.Grants) > 0 || len(cfg.Budgets) > 0) {
		d.log.Warn("config grants and budgets are ignored outside dev mode: they come from the key ceremony and quorum proposals",
			"grants", len(cfg.Grants), "budgets", len(cfg.Budgets))
	}
	metrics := server.NewMetrics(reg, d.HSM, func() *keys.Registry { return d.Keys })
	if err := d.openGovernance(ctx, reg, signer); err != nil {
		return fmt.Errorf("governance: %w", storeRefusal(cfg.Store.String(), err))
	}
	d.Server = server.New(server.Options{
		HSM: d.HSM, Keys: d.Keys, Gov: d.Gov, Audit: d.Audit, Digester: digester, Metrics: metrics,
		Logger: d.log, Now: d.opts.Now,
		Limits:    server.Limits{MaxPayload: cfg.Keys.MaxPayloadBytes, MaxBatch: cfg.Keys.MaxBatch, DestroyWaitDefault: cfg.Keys.DestroyWaitDefault},
		Admission: d.limits.admission, Anchor: d.anchorNow,
	})
	if err := d.Seal.LoggedIn(ctx, d.Store, d.HSM, signer.Public()); err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	if cfg.Dev {
		if err := d.EnsureDevKey(ctx, cfg); err != nil {
			return fmt.Errorf("dev key: %w", err)
		}
	}
	d.Server.SetDataKeyStore(d.Store)
	d.Server.SetAuditMarkStatus(d.AuditMarkStatus)
	reg.MustRegister(d.Audit.Collector())
	d.registerOpsMetrics(reg)
	d.registerMarkMetrics(reg)
	if err := d.bind(signer); err != nil {
		return err
	}
	d.unsealReg.Store(reg)

	d.wg.Add(2)
	go func() { defer d.wg.Done(); d.governanceLoop(d.runCtx) }()
	go func() { defer d.wg.Done(); d.mark.Run(d.runCtx) }()
	if d.prefixMark != nil {
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.verifyAuditPrefix(d.runCtx, signer.Public()) }()
	}
	d.startReplica(reg)
	if d.lease != nil {
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.lease.Run(d.runCtx, d.fence) }()
	}
	d.completed.Store(true)
	d.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	if d.gate != nil {
		d.gate.health = d.health
		d.gate.verify = d.Store.Err
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.gate.run(d.runCtx) }()
	}
	d.log.Info("custodyd serving", "grpc", d.grpcLis.Addr().String(), "http", d.httpLis.Addr().String(), "gateway", d.GatewayAddr(),
		"keys", d.Keys.Len(), "token", cfg.HSM.String(), "pin_source", d.Seal.PINSource())
	return nil
}

// openAudit opens the audit log with signer.
func (d *Daemon) openAudit(ctx context.Context, signer crypto.Signer) (*audit.Log, error) {
	cfg := d.cfg
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
	// Every checkpoint also becomes the token's audit mark (rollback.go).
	sink = auditmark.Tee(d.mark, sink)
	l, err := audit.Open(ctx, cfg.Audit.Dir, signer, audit.Options{
		SegmentSize: cfg.Audit.SegmentBytes, CheckpointEvery: uint64(cfg.Audit.CheckpointEvery),
		CheckpointInterval: cfg.Audit.CheckpointInterval, Logger: d.log, Sink: &checkpointSink{d: d, next: sink},
		InstanceID: cfg.ReplicaID, Replica: cfg.ReplicaID,
		DisableGroupCommit: d.opts.AuditNoGroupCommit,
		StoreRevision: func() uint64 {
			if st := d.anchor.Load(); st != nil {
				return st.Anchor().Revision
			}
			return 0
		},
	})
	if err != nil {
		return nil, prefixed("audit", err)
	}
	// Where the directory stood before this run wrote to it: what the
	// token's audit mark is compared with (a sealed custodyd records unseal
	// attempts before it can check).
	d.openedHead, _ = l.Head()
	return l, nil
}

// gather is the metrics of both phases.
func (d *Daemon) gather() ([]*dto.MetricFamily, error) {
	g := prometheus.Gatherers{d.reg}
	if r := d.unsealReg.Load(); r != nil {
		g = append(g, r)
	}
	return g.Gather()
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

// prefixed names the part of start-up that failed, once: the errors of
// hsm, store and audit already start with their package's name.
func prefixed(part string, err error) error {
	if strings.HasPrefix(err.Error(), part+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", part, err)
}

// requireCustody refuses, outside dev mode, a token that the start-up probe
// saw let a non-extractable key out: master keys on it could leave the HSM.
func requireCustody(cfg *config.Config, c hsm.Capabilities) error {
	if c.Extract.OK || cfg.Dev {
		return nil
	}
	return fmt.Errorf("hsm: refusing to hold keys on this token outside dev mode: %s (profile %s); see docs/hsm-compatibility.md", c.Extract.Detail, c.Profile)
}

// storeRefusal names what is wrong with a store custodyd will not serve.
func storeRefusal(name string, err error) error {
	switch {
	case errors.Is(err, store.ErrTampered):
		return fmt.Errorf("store %s failed authentication (edited outside custodyd?); refusing to serve: %w", name, err)
	case errors.Is(err, store.ErrRolledBack):
		return fmt.Errorf("store %s was rolled back or had records deleted outside custodyd; refusing to serve: %w", name, err)
	case errors.Is(err, store.ErrUnavailable):
		return fmt.Errorf("store %s cannot be verified: the hsm is unavailable (this is not tampering): %w", name, err)
	}
	return err
}

func (d *Daemon) readyz(w http.ResponseWriter, r *http.Request) {
	var problems []string
	switch st := d.Seal.State(); {
	case st == sealsvc.StateSealed && !d.cfg.HSM.Sealed():
		problems = append(problems, "starting")
	case st == sealsvc.StateSealed, st == sealsvc.StateAwaitingCeremony, st == sealsvc.StateFenced:
		problems = append(problems, d.sealedError().(interface{ GRPCStatus() *status.Status }).GRPCStatus().Message())
	}
	if d.completed.Load() && len(problems) == 0 {
		if st := d.HSM.State(); st != hsm.StateReady {
			problems = append(problems, "hsm "+st.String())
		}
		if d.gate != nil {
			if err := d.gate.err(); err != nil {
				problems = append(problems, "store: "+err.Error())
			}
		} else if _, err := d.Store.Revision(r.Context()); err != nil {
			problems = append(problems, "store: "+err.Error())
		}
		if err := d.Audit.Healthy(); err != nil {
			problems = append(problems, "audit: "+err.Error())
		}
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
// in-flight ones, then closes the audit log, releases the token lease and
// closes the store and HSM.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.once.Do(func() {
		d.health.Shutdown()
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
		d.limits.restore()
	})
	return d.closeErr
}

func (d *Daemon) closeAll() {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if d.Gov != nil {
		// Unused budget reservations go back before the store closes.
		errs = append(errs, d.Gov.Close(ctx))
	}
	if d.Audit != nil {
		errs = append(errs, d.Audit.Close(ctx))
	}
	if d.mark != nil && d.HSM != nil {
		// The final checkpoint becomes the token's mark before the HSM closes.
		errs = append(errs, d.mark.Flush(ctx))
	}
	if d.lease != nil {
		errs = append(errs, d.lease.Release(ctx))
	}
	if d.raw != nil {
		errs = append(errs, d.raw.Close())
	}
	if d.HSM != nil {
		errs = append(errs, d.HSM.Close())
	}
	d.closeErr = errors.Join(errs...)
}

// streamWorkers sizes the gRPC server's request goroutine pool: requests
// mostly wait (on the HSM, on the audit flush), so several per CPU.
func streamWorkers() uint32 { return uint32(max(32, 8*runtime.GOMAXPROCS(0))) }

// recordDestroy puts a scheduled key-version destruction on the audit
// record, under the custodyd identity with method keys.destroy: an intent
// before the HSM object is deleted, then the outcome.
func (d *Daemon) recordDestroy(ctx context.Context, ev keys.DestroyEvent) error {
	rec := audit.Record{Time: d.opts.Now(), Identity: "custodyd", Method: "keys.destroy", Key: ev.Key, KeyVersion: uint64(ev.Version),
		Detail: "scheduled destruction: HSM object deleted"}
	switch {
	case ev.Intent:
		rec.Outcome, rec.Code, rec.Detail = audit.OutcomeIntent, "-", "scheduled destruction: deleting the HSM object"
	case ev.Err != nil && ev.ObjectDeleted:
		rec.Outcome, rec.Code, rec.Detail = audit.OutcomeError, "Internal", "scheduled destruction: HSM object deleted, but recording it in the store failed (retried): "+ev.Err.Error()
	case ev.Err != nil:
		rec.Outcome, rec.Code, rec.Detail = audit.OutcomeError, "Internal", "scheduled destruction failed: "+ev.Err.Error()
	default:
		rec.Outcome, rec.Code = audit.OutcomeOK, "OK"
	}
	_, err := d.Audit.Append(context.WithoutCancel(ctx), rec)
	return err
}
