package daemon

import (
	"context"
	"sync"

	"google.golang.org/grpc"
)

// binder lets one gRPC server, listening from the first moment of a sealed
// start, serve services whose implementations exist only once the vault is
// unsealed. At start every service is registered through a wrapped copy of
// its descriptor; each call looks up the implementation bound by the time
// it arrives, and before then is answered by unbound (UNAVAILABLE
// "sealed"), or handed to a hook (the key ceremony, which carries the PIN
// that unseals). After unsealing the daemon binds the implementations by
// registering them with the binder instead of the server.
type binder struct {
	unbound func() error

	mu    sync.RWMutex
	impls map[string]any
	hooks map[string]unaryHook
	known map[string]bool
	extra []string // services registered after start that were not declared
}

// unaryHook answers an unbound unary method. call runs the real handler on
// impl once the hook has bound it, decoding the request with dec.
type unaryHook func(ctx context.Context, dec func(any) error, call func(dec func(any) error) (any, error)) (any, error)

func newBinder(unbound func() error) *binder {
	return &binder{unbound: unbound, impls: map[string]any{}, hooks: map[string]unaryHook{}, known: map[string]bool{}}
}

// anyHandler is the handler type of wrapped descriptors: every value
// implements it, so grpc's registration check passes for the binder.
type anyHandler interface{}

// declare registers a wrapped copy of desc with g.
func (b *binder) declare(g *grpc.Server, desc *grpc.ServiceDesc) {
	b.known[desc.ServiceName] = true
	w := &grpc.ServiceDesc{ServiceName: desc.ServiceName, HandlerType: (*anyHandler)(nil), Metadata: desc.Metadata}
	for _, m := range desc.Methods {
		orig, full := m.Handler, "/"+desc.ServiceName+"/"+m.MethodName
		w.Methods = append(w.Methods, grpc.MethodDesc{MethodName: m.MethodName,
			Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				impl, hook := b.lookup(desc.ServiceName, full)
				if impl != nil {
					return orig(impl, ctx, dec, icpt)
				}
				if hook != nil {
					return hook(ctx, dec, func(dec func(any) error) (any, error) {
						impl, _ := b.lookup(desc.ServiceName, full)
						if impl == nil {
							return nil, b.unbound()
						}
						return orig(impl, ctx, dec, icpt)
					})
				}
				return nil, b.unbound()
			}})
	}
	for _, s := range desc.Streams {
		orig := s.Handler
		s.Handler = func(_ any, ss grpc.ServerStream) error {
			impl, _ := b.lookup(desc.ServiceName, "")
			if impl == nil {
				return b.unbound()
			}
			return orig(impl, ss)
		}
		w.Streams = append(w.Streams, s)
	}
	g.RegisterService(w, b)
}

// hook sets the hook of one unary method (full name "/pkg.Svc/Method").
func (b *binder) hook(full string, h unaryHook) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hooks[full] = h
}

func (b *binder) lookup(service, full string) (any, unaryHook) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.impls[service], b.hooks[full]
}

// healthService is served by the daemon's own health server from the
// start; a health registration at unseal time is ignored.
const healthService = "grpc.health.v1.Health"

// RegisterService binds impl to a declared service (grpc.ServiceRegistrar).
func (b *binder) RegisterService(desc *grpc.ServiceDesc, impl any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if desc.ServiceName == healthService {
		return
	}
	if !b.known[desc.ServiceName] {
		b.extra = append(b.extra, desc.ServiceName)
		return
	}
	b.impls[desc.ServiceName] = impl
}

// undeclared lists services registered after start that the server was not
// built with (a programming error the daemon refuses to start with).
func (b *binder) undeclared() []string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return append([]string(nil), b.extra...)
}

// unbindAll forgets every implementation: calls are answered unbound again.
func (b *binder) unbindAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.impls)
}
