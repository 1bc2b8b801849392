package daemon

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/gateway"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/sealsvc"
	"github.com/custodyhq/custody/internal/secmem"
	"github.com/custodyhq/custody/internal/server"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/tokenlock"
)

// sealExpireInterval is how often a sealed custodyd discards expired
// unseal progress (the TTL itself is seal.unseal_timeout).
const sealExpireInterval = 10 * time.Second

// lateServices are served only once the vault is unsealed: the binder
// answers them UNAVAILABLE "sealed" until then.
var lateServices = []*grpc.ServiceDesc{
	&custodyv1.KeyService_ServiceDesc,
	&custodyv1.CryptoService_ServiceDesc,
	&custodyv1.GovernanceService_ServiceDesc,
	&custodyv1.DataKeyService_ServiceDesc,
	&custodyv1.AuditService_ServiceDesc,
	&custodyv1.StatusService_ServiceDesc,
}

// openSeal reads the seal state before login and, for a sealed vault
// whose audit key is known, opens the audit log with that key's public
// half: refused unseal attempts are then on the hash-chained record even
// if the vault is never unsealed this run (checkpoints wait for login).
func (d *Daemon) openSeal(ctx context.Context) error {
	cfg := d.cfg
	var err error
	d.Seal, err = sealsvc.New(ctx, sealsvc.Options{
		RawValue: d.rawValue, PINSource: cfg.HSM.PINSourceName(), Roles: rolesFromConfig(cfg),
		ProgressTTL: cfg.Seal.UnsealTimeout, Complete: d.complete, Registerer: d.reg, Logger: d.log, Now: d.opts.Now,
	})
	if err != nil {
		return fmt.Errorf("seal: %w", err)
	}
	d.health = health.NewServer()
	d.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	rec := d.Seal.Record()
	if !cfg.HSM.Sealed() || rec == nil || len(rec.AuditKey) == 0 {
		return nil
	}
	pub, err := x509.ParsePKIXPublicKey(rec.AuditKey)
	if err != nil {
		return fmt.Errorf("seal record: audit key: %w", err)
	}
	d.lateAudit = &lateSigner{pub: pub}
	if d.Audit, err = d.openAudit(ctx, d.lateAudit); err != nil {
		return err
	}
	return d.Seal.SetAuditor(ctx, d.Audit)
}

// rawValue reads a store value before login: the value without its HSM
// MAC, which is checked once the HSM is logged in.
func (d *Daemon) rawValue(ctx context.Context, key string) ([]byte, error) {
	kv, err := d.raw.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return unverifiedValue(kv.Value)
}

func rolesFromConfig(cfg *config.Config) map[string]policy.Role {
	roles := map[string]policy.Role{}
	for _, id := range cfg.Identities {
		roles[id.ID()] = policy.Role(id.Role)
	}
	return roles
}

// declareServices registers, on the gRPC server made at start, the health
// and seal services (served sealed) and the late-bound rest.
func (d *Daemon) declareServices() {
	d.binder = newBinder(d.sealedError)
	for _, desc := range lateServices {
		d.binder.declare(d.grpc, desc)
	}
	d.binder.hook(custodyv1.GovernanceService_InitCeremony_FullMethodName, d.ceremonyHook)
	healthpb.RegisterHealthServer(d.grpc, d.health)
	d.Seal.Register(d.grpc)
}

// sealedError is the answer to a call that needs an unsealed vault.
func (d *Daemon) sealedError() error {
	switch d.Seal.State() {
	case sealsvc.StateAwaitingCeremony:
		return status.Error(codes.Unavailable, "sealed: custodyd is awaiting its key ceremony (custodyctl ceremony init)")
	case sealsvc.StateFenced:
		return status.Error(codes.Unavailable, "fenced: "+d.Seal.Status().GetDetail())
	}
	p := d.Seal.Progress()
	return status.Errorf(codes.Unavailable, "sealed: custodyd needs %d officers' shares to unseal (%d accepted; custodyctl unseal)", p.Need, p.Have)
}

// interceptors are the unsealed server's, chained in by the gate.
type interceptors struct {
	unary  grpc.UnaryServerInterceptor
	stream grpc.StreamServerInterceptor
}

const sealServicePrefix = "/custody.v1.SealService/"

func isHealth(full string) bool { return strings.HasPrefix(full, "/grpc.health.v1.Health/") }

// gateUnary is the first interceptor: the seal service authenticates and
// audits its own calls (it must work before anything else exists); health
// needs only a verified client certificate; everything else goes to the
// unsealed server's interceptors, or is refused while sealed or fenced.
func (d *Daemon) gateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	switch {
	case strings.HasPrefix(info.FullMethod, sealServicePrefix):
		if err := server.DecodeError(req); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return handler(ctx, req)
	case isHealth(info.FullMethod):
		if err := verifiedPeer(ctx); err != nil {
			return nil, err
		}
		if err := server.DecodeError(req); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return handler(ctx, req)
	}
	in := d.inner.Load()
	if in == nil || d.Seal.State() == sealsvc.StateFenced {
		return nil, d.sealedError()
	}
	return in.unary(ctx, req, info, handler)
}

func (d *Daemon) gateStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	switch {
	case strings.HasPrefix(info.FullMethod, sealServicePrefix):
		return handler(srv, ss)
	case isHealth(info.FullMethod):
		if err := verifiedPeer(ss.Context()); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	in := d.inner.Load()
	if in == nil || d.Seal.State() == sealsvc.StateFenced {
		return d.sealedError()
	}
	return in.stream(srv, ss, info, handler)
}

// verifiedPeer requires a verified client certificate (or the gateway's
// forwarded identity on its own connection).
func verifiedPeer(ctx context.Context) error {
	if _, fwd, err := gateway.ForwardedIdentity(ctx); err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	} else if fwd {
		return nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 {
		return status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	return nil
}

// ceremonyHook runs InitCeremony on a custodyd awaiting its ceremony: the
// request carries the installer's PIN encrypted to this process's unseal
// key; custodyd logs in with it, completes its start, and then runs the
// ceremony through the normal path (interceptors, audit, governance),
// which replaces the PIN and splits the new one among the officers.
func (d *Daemon) ceremonyHook(ctx context.Context, dec func(any) error, call func(func(any) error) (any, error)) (any, error) {
	if d.Seal.State() != sealsvc.StateAwaitingCeremony {
		return nil, d.sealedError()
	}
	req := new(custodyv1.InitCeremonyRequest)
	if err := dec(req); err != nil {
		return nil, err
	}
	pin, err := d.Seal.OpenCeremonyPIN(ctx, req)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	err = d.complete(cctx, pin.Bytes())
	cancel()
	pin.Destroy()
	if err != nil && !d.completed.Load() {
		d.log.Warn("key ceremony: the start with the installer's PIN failed", "err", err)
		d.Seal.CeremonyFailed(ctx, err)
		if errors.Is(err, hsm.ErrLogin) {
			return nil, status.Error(codes.PermissionDenied, "the token refused the installer's PIN (not retried)")
		}
		return nil, status.Errorf(codes.FailedPrecondition, "the start with the installer's PIN failed: %v", err)
	}
	return call(func(m any) error {
		proto.Merge(m.(proto.Message), req)
		return nil
	})
}

// bind makes the unsealed services live.
func (d *Daemon) bind(auditSigner crypto.Signer) error {
	d.Server.Register(d.binder)
	d.Server.RegisterAuditService(d.binder, server.NewAuditService(d.Audit, auditSigner))
	if extra := d.binder.undeclared(); len(extra) > 0 {
		d.binder.unbindAll()
		return fmt.Errorf("services %v are not declared for sealed start (internal/daemon lateServices)", extra)
	}
	u, s := d.Server.Interceptors()
	if d.gate != nil {
		u, s = d.gate.inside(u, s)
	}
	d.inner.Store(&interceptors{unary: u, stream: s})
	return nil
}

// takeLease takes this token's instance lease: one custodyd per token, or
// the replicas of one shared (etcd) store together.
//
// A token that keeps no data objects (NSS softokn) cannot hold the lease;
// there the store's own lock (bbolt's file lock) is the only guard, which
// root defeats by copying the store, so custodyd says so. Such tokens are
// refused for production vaults anyway (hsm capabilities).
func (d *Daemon) takeLease(ctx context.Context) error {
	if p := d.HSM.Profile(); p != nil && p.NoDataObjects {
		d.log.Warn("the HSM token keeps no data objects: no instance lease on the token; only the store's lock keeps a second custodyd off this vault",
			"profile", p.Name)
		return nil
	}
	o := tokenlock.Options{TTL: d.cfg.Seal.LeaseTTL, Listen: d.grpcLis.Addr().String(), Logger: d.log}
	if sh, ok := d.raw.(store.Shared); ok {
		// Replicas on one shared store hold the token together.
		id, err := sh.Shared(ctx)
		if err != nil {
			return prefixed("store", err)
		}
		o.Cluster = id
	}
	l, err := tokenlock.New(d.HSM, o)
	if err != nil {
		return err
	}
	if err := l.Acquire(ctx); err != nil {
		return fmt.Errorf("refusing to serve: %w", err)
	}
	d.lease = l
	return nil
}

// fence stops serving after the lease was lost to another custodyd.
func (d *Daemon) fence(err error) {
	d.log.Error("custodyd STOPPED SERVING: its lease on the HSM token was lost (another custodyd took over?)", "err", err)
	d.Seal.Fence(err.Error())
	d.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	d.inner.Store(nil)
	d.binder.unbindAll()
	d.stop()
}

// undoComplete puts the daemon back to sealed after a failed complete, so
// a later attempt (the next officer's share) starts over cleanly.
func (d *Daemon) undoComplete(auditOpened bool) {
	d.inner.Store(nil)
	d.binder.unbindAll()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if auditOpened && d.Audit != nil {
		_ = d.Seal.SetAuditor(ctx, nil)
		_ = d.Audit.Close(ctx)
		d.Audit = nil
	} else if d.lateAudit != nil {
		d.lateAudit.disarm()
	}
	if d.lease != nil {
		_ = d.lease.Release(ctx)
		d.lease = nil
	}
	d.mark.Disarm()
	if d.HSM != nil {
		_ = d.HSM.Close()
		d.HSM = nil
	}
	d.Store, d.Keys, d.Server, d.Gov, d.AuditPK = nil, nil, nil, nil, nil
	d.Seal.Reseal()
}

// abort releases what a failed Start made.
func (d *Daemon) abort() {
	if d.grpc != nil {
		d.grpc.Stop()
	}
	for _, l := range []io.Closer{d.grpcLis, d.httpLis, d.gwLis} {
		if l != nil {
			_ = l.Close()
		}
	}
	if d.http != nil {
		_ = d.http.Close()
	}
	if d.gw != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = d.gw.Shutdown(ctx)
		cancel()
	}
	if d.stop != nil {
		d.stop()
	}
	d.wg.Wait()
	d.closeAll()
	d.limits.restore()
}

// lateSigner is the audit key of a sealed custodyd: its public half is
// known from the seal record, its signatures only after login.
type lateSigner struct {
	pub crypto.PublicKey
	s   atomic.Pointer[crypto.Signer]
}

func (l *lateSigner) Public() crypto.PublicKey { return l.pub }

func (l *lateSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s := l.s.Load()
	if s == nil {
		return nil, audit.ErrSignerNotReady
	}
	return (*s).Sign(r, digest, opts)
}

// arm installs the HSM audit key after login; it must be the key the log
// was opened with.
func (l *lateSigner) arm(s crypto.Signer) error {
	a, err1 := x509.MarshalPKIXPublicKey(l.pub)
	b, err2 := x509.MarshalPKIXPublicKey(s.Public())
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		return errors.New("audit: the token's audit key is not the one the seal record names; refusing to serve")
	}
	l.s.Store(&s)
	return nil
}

func (l *lateSigner) disarm() { l.s.Store(nil) }

// registerHardening exports what was done to keep secrets out of core
// files and swap: custody_process_hardening{measure} is 1 when in force.
func registerHardening(reg *prometheus.Registry, h *secmem.Hardening) {
	if h == nil {
		h = &secmem.Hardening{}
	}
	for measure, on := range map[string]bool{"not_dumpable": h.NotDumpable, "no_core": h.NoCore, "mlockall": h.LockedAll} {
		v := 0.0
		if on {
			v = 1
		}
		g := prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "custody", Subsystem: "process", Name: "hardening",
			Help:        "1 when a memory-hygiene measure is in force: not_dumpable (PR_SET_DUMPABLE=0), no_core (RLIMIT_CORE=0), mlockall (no page can be swapped).",
			ConstLabels: prometheus.Labels{"measure": measure},
		})
		g.Set(v)
		reg.MustRegister(g)
	}
}
