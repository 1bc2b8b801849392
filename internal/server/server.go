// Package server implements Custody's gRPC services over the HSM, the key
// registry, the policy and the audit log.
//
// Invariants:
//   - Every RPC passes one interceptor chain: the caller is identified from
//     its verified client certificate (mTLS only), every request — allowed,
//     denied or failed — is written to the audit log before it is answered,
//     and a request whose audit record cannot be made durable fails with
//     UNAVAILABLE (fail closed).
//   - Authorisation is decided per key and operation by the policy before
//     the HSM is touched; a caller without a role gets nothing.
//   - Errors become gRPC status codes in exactly one place (status.go).
//   - No handler returns key material of a key in custody; the only key bytes
//     that ever leave are data keys, and only where the caller asked for
//     plaintext and its grant allows it.
package server

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/admission"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/policy"
)

// Auditor is where request records go. *audit.Log implements it.
type Auditor interface {
	Append(ctx context.Context, rec audit.Record) (uint64, error)
}

// Options wires a Server.
type Options struct {
	HSM     *hsm.Module
	Keys    *keys.Registry
	Policy  *policy.Policy
	Roles   map[string]policy.Role // identity -> role
	Limiter *policy.Limiter        // nil: no budgets are enforced
	Audit   Auditor                // required: every request is audited
	Metrics *Metrics               // nil: no metrics
	Logger  *slog.Logger
	Now     func() time.Time
	Limits  Limits
	// Admission caps each identity's requests in flight and refuses new
	// work under memory pressure (admission.go); nil admits everything.
	Admission *admission.Limiter
}

// Limits bound request sizes.
type Limits struct {
	MaxPayload         int           // plaintext bytes for Encrypt (default 64 KiB)
	MaxBatch           int           // items per batch call (default 100)
	MaxPageSize        int           // ListKeys page size (default 100)
	DestroyWaitDefault time.Duration // ScheduleKeyDestruction default (7 days)
}

// Server implements custody.v1's services.
type Server struct {
	custodyv1.UnimplementedKeyServiceServer
	custodyv1.UnimplementedCryptoServiceServer

	hsm     *hsm.Module
	keys    *keys.Registry
	policy  atomic.Pointer[policy.Policy]
	roles   map[string]policy.Role         // identity -> role; replaced whole, never mutated
	limiter atomic.Pointer[policy.Limiter] // nil: no budgets (development, before the ceremony)
	// gov is set by NewGovernance before serving; governed refuses direct
	// key and grant changes once the vault is under quorum governance.
	gov      *Governance
	governed atomic.Bool
	audit    Auditor
	metrics  *Metrics
	log      *slog.Logger
	now      func() time.Time
	limits   Limits
	health   *health.Server

	dataKeys atomic.Pointer[dataKeyStore] // stored data keys (datakeys.go); nil until SetDataKeyStore

	admission *admission.Limiter // nil: no admission control
}

// New builds a Server from its dependencies.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Limits.MaxPayload <= 0 {
		o.Limits.MaxPayload = keys.MaxPlaintextLen
	}
	if o.Limits.MaxBatch <= 0 {
		o.Limits.MaxBatch = 100
	}
	if o.Limits.MaxPageSize <= 0 {
		o.Limits.MaxPageSize = 100
	}
	if o.Limits.DestroyWaitDefault <= 0 {
		o.Limits.DestroyWaitDefault = 7 * 24 * time.Hour
	}
	s := &Server{
		hsm: o.HSM, keys: o.Keys, audit: o.Audit, metrics: o.Metrics,
		log: o.Logger, now: o.Now, limits: o.Limits, health: health.NewServer(),
		admission: o.Admission,
	}
	s.policy.Store(o.Policy)
	if o.Limiter != nil {
		s.limiter.Store(o.Limiter)
	}
	s.SetRoles(o.Roles)
	return s
}

// SetPolicy swaps the policy atomically (after a grant change).
func (s *Server) SetPolicy(p *policy.Policy) { s.policy.Store(p) }

// Policy returns the policy in force.
func (s *Server) Policy() *policy.Policy { return s.policy.Load() }

// Register adds the services to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	custodyv1.RegisterKeyServiceServer(g, s)
	custodyv1.RegisterCryptoServiceServer(g, s)
	if s.gov != nil {
		custodyv1.RegisterGovernanceServiceServer(g, s.gov)
	}
	custodyv1.RegisterDataKeyServiceServer(g, s.DataKeyServiceServer())
	healthpb.RegisterHealthServer(g, s.health)
}

// Health is the standard health service, for the daemon to set serving state.
func (s *Server) Health() *health.Server { return s.health }

// ServerOptions returns the interceptors every custody gRPC server must use.
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.unaryInterceptor),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
	}
}
