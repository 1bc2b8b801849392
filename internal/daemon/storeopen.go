package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/store"
)

// openStore opens the configured metadata store backend (unauthenticated:
// Start wraps it with the HSM sealer).
func openStore(ctx context.Context, cfg config.StoreConfig) (store.Store, error) {
	switch cfg.Backend {
	case config.BackendEtcd:
		tc, err := etcdClientTLS(cfg.Etcd)
		if err != nil {
			return nil, err
		}
		return store.OpenEtcd(ctx, store.EtcdOptions{
			Endpoints: cfg.Etcd.Endpoints, TLS: tc, Prefix: cfg.Etcd.Prefix,
			DialTimeout: cfg.Etcd.DialTimeout, RequestTimeout: cfg.Etcd.RequestTimeout,
		})
	case config.BackendBbolt, "":
		return store.OpenBolt(cfg.Path, store.BoltOptions{})
	}
	return nil, fmt.Errorf("unknown store backend %q", cfg.Backend)
}

// etcdClientTLS loads the etcd client certificate and CA. The server name
// is left empty so that each endpoint's certificate is checked against its
// own host.
func etcdClientTLS(c config.EtcdConfig) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("etcd client certificate %s, %s: %w", c.CertFile, c.KeyFile, err)
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("etcd ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("etcd ca_file %s holds no PEM certificate", c.CAFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{pair}}, nil
}

// Store reachability probing (etcd backend).
const (
	// storeProbeInterval is how often the store is probed.
	storeProbeInterval = time.Second
)

// storeGate fails requests closed while the shared store cannot be reached:
// it probes the store with a linearizable read every storeProbeInterval
// (bounded by the store's own request timeout) and, while the last probe
// failed, refuses every request with UNAVAILABLE and reports NOT_SERVING on
// the gRPC health service, so that clients' load balancers move to other
// replicas. A replica cut off from etcd thus stops answering from state it
// can no longer confirm within storeProbeInterval plus the request timeout.
// It recovers by itself when a probe succeeds again.
type storeGate struct {
	s      store.Store
	desc   string
	log    *slog.Logger
	health interface {
		SetServingStatus(string, healthpb.HealthCheckResponse_ServingStatus)
	}
	problem atomic.Pointer[string] // nil: reachable
	// verify, if set, says why this replica cannot follow the store now
	// (the authenticated store's Err): requests are refused then too.
	verify func() error
}

func newStoreGate(s store.Store, desc string, log *slog.Logger) *storeGate {
	return &storeGate{s: s, desc: desc, log: log}
}

// err returns why requests are refused, or nil.
func (g *storeGate) err() error {
	if p := g.problem.Load(); p != nil {
		return errors.New(*p)
	}
	return nil
}

// probe checks the store once and updates the gate.
func (g *storeGate) probe(ctx context.Context) {
	_, err := g.s.Revision(ctx)
	if ctx.Err() != nil {
		return
	}
	was := g.problem.Load()
	if err != nil {
		msg := g.desc + " unreachable: " + err.Error()
		if errors.Is(err, store.ErrUnavailable) {
			msg = g.desc + " unreachable"
		}
		g.problem.Store(&msg)
		if was == nil {
			g.log.Error("metadata store unreachable; refusing requests until it answers", "store", g.desc, "err", err)
			if g.health != nil {
				g.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
			}
		}
		return
	}
	if err == nil && g.verify != nil {
		if verr := g.verify(); verr != nil {
			msg := g.desc + " cannot be verified: " + verr.Error()
			g.problem.Store(&msg)
			if was == nil {
				g.log.Error("this replica cannot verify the shared store; refusing requests until it can", "store", g.desc, "err", verr)
				if g.health != nil {
					g.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
				}
			}
			return
		}
	}
	g.problem.Store(nil)
	if was != nil {
		g.log.Info("metadata store reachable again; serving", "store", g.desc)
		if g.health != nil {
			g.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		}
	}
}

func (g *storeGate) run(ctx context.Context) {
	t := time.NewTicker(storeProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.probe(ctx)
		}
	}
}

func isHealthMethod(full string) bool { return strings.HasPrefix(full, "/grpc.health.v1.Health/") }

// refusal is the status of a request refused by the gate.
func (g *storeGate) refusal() error {
	if p := g.problem.Load(); p != nil {
		return status.Error(codes.Unavailable, "metadata store unavailable ("+*p+"): request refused")
	}
	return nil
}

// inside wraps the server's own interceptors (u, st) so that the gate runs
// after them: a refused request is still authenticated and audited.
func (g *storeGate) inside(u grpc.UnaryServerInterceptor, st grpc.StreamServerInterceptor) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return u(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			if !isHealthMethod(info.FullMethod) {
				if err := g.refusal(); err != nil {
					return nil, err
				}
			}
			return h(ctx, req)
		})
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return st(srv, ss, info, func(srv any, ss grpc.ServerStream) error {
			if !isHealthMethod(info.FullMethod) {
				if err := g.refusal(); err != nil {
					return err
				}
			}
			return h(srv, ss)
		})
	}
	return unary, stream
}

// registerOpsMetrics adds the gauges the cluster alerts and dashboard use:
// whether the metadata store answers (etcd: the gate's last probe; bbolt:
// always 1 while open) and how many identity×key budgets are frozen.
func (d *Daemon) registerOpsMetrics(reg prometheus.Registerer) {
	backend := string(d.cfg.Store.Backend)
	if backend == "" {
		backend = string(config.BackendBbolt)
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "custody", Subsystem: "store", Name: "reachable",
			Help:        "1 while the metadata store answers (etcd: a linearizable read every second), 0 while requests are refused because it does not.",
			ConstLabels: prometheus.Labels{"backend": backend},
		}, func() float64 {
			if d.gate != nil && d.gate.err() != nil {
				return 0
			}
			return 1
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "custody", Subsystem: "budget", Name: "frozen",
			Help: "Identity×key pairs frozen after a sustained budget breach, until an unfreeze proposal executes.",
		}, func() float64 { return float64(d.Server.FrozenSubjects()) }),
	)
}
