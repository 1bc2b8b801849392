package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	custodyv1gw "github.com/custodyhq/custody/api/custody/v1/gw"
	"github.com/custodyhq/custody/internal/netlimit"
	"github.com/custodyhq/custody/internal/pki"
)

// MaxBodyBytes is the default bound on an HTTP request body. It leaves room
// for base64 of the gRPC server's 16 MiB message limit; larger bodies are
// refused with 413 (Options.Limits.MaxBodyBytes overrides it).
const MaxBodyBytes = 24 << 20

// maxMessageBytes matches custodyd's gRPC MaxRecvMsgSize.
const maxMessageBytes = 16 << 20

// Options configure a Gateway.
type Options struct {
	// Logger receives connection-level errors; nil means slog.Default().
	Logger *slog.Logger
	// Limits bound each HTTP request and connection; zero fields take the
	// defaults of DefaultLimits.
	Limits Limits
}

// Limits bound what one HTTP client can hold of the gateway.
type Limits struct {
	ReadHeaderTimeout time.Duration // reading request headers
	ReadTimeout       time.Duration // reading the whole request
	WriteTimeout      time.Duration // end of headers to end of response
	IdleTimeout       time.Duration // a keep-alive connection between requests
	MaxHeaderBytes    int           // request headers (HTTP/1: plus 4 KiB of slack)
	MaxBodyBytes      int64         // request body; larger ones get 413
	MaxStreams        uint32        // concurrent HTTP/2 streams per connection
}

// DefaultLimits are the limits of a zero Limits.
var DefaultLimits = Limits{
	ReadHeaderTimeout: 5 * time.Second, ReadTimeout: time.Minute, WriteTimeout: time.Minute,
	IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10, MaxBodyBytes: MaxBodyBytes, MaxStreams: 128,
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.ReadHeaderTimeout > 0 {
		d.ReadHeaderTimeout = l.ReadHeaderTimeout
	}
	if l.ReadTimeout > 0 {
		d.ReadTimeout = l.ReadTimeout
	}
	if l.WriteTimeout > 0 {
		d.WriteTimeout = l.WriteTimeout
	}
	if l.IdleTimeout > 0 {
		d.IdleTimeout = l.IdleTimeout
	}
	if l.MaxHeaderBytes > 0 {
		d.MaxHeaderBytes = l.MaxHeaderBytes
	}
	if l.MaxBodyBytes > 0 {
		d.MaxBodyBytes = l.MaxBodyBytes
	}
	if l.MaxStreams > 0 {
		d.MaxStreams = l.MaxStreams
	}
	return d
}

// Gateway is the REST/JSON front of custodyd.
type Gateway struct {
	conn      *grpc.ClientConn
	mux       *runtime.ServeMux
	marshaler runtime.Marshaler
	tlsCfg    *tls.Config
	srv       *http.Server
	handler   http.Handler
	limits    Limits
}

type identityKey struct{}

// certFactsKey carries the verified client certificate's key and chain
// roots from serveHTTP to forwardIdentity.
type certFactsKey struct{}

type certFacts struct{ spki, roots string }

// New builds a gateway that forwards every request over the in-process
// connection internal, which the custodyd gRPC server must be serving with
// ServerCredentials. tlsCfg is the HTTPS configuration; it must require and
// verify client certificates (pki.ServerTLSConfig does), or New fails with
// ErrInsecureTLS.
func New(ctx context.Context, internal *Listener, tlsCfg *tls.Config, o Options) (*Gateway, error) {
	if tlsCfg == nil || tlsCfg.ClientAuth != tls.RequireAndVerifyClientCert || tlsCfg.ClientCAs == nil {
		return nil, ErrInsecureTLS
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	// The in-process pipe needs no transport security: it never leaves the
	// process, and the server marks it by its listener, not by a handshake.
	conn, err := grpc.NewClient("passthrough:///custody-gateway",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return internal.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)),
		grpc.WithUnaryInterceptor(markForwarded),
	)
	if err != nil {
		return nil, fmt.Errorf("gateway: in-process connection: %w", err)
	}
	marshaler := &runtime.JSONPb{
		// Field names as written in the .proto (key_name), every field
		// present in answers (so "valid": false is not an empty object), and
		// unknown request fields refused rather than ignored.
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}
	var g *Gateway
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, marshaler),
		// A body that does not decode never reaches the gRPC server on its
		// own: have it audited there all the same (auditUndecoded).
		runtime.WithErrorHandler(func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
			g.auditUndecoded(ctx, r, err)
			runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
		}),
		// Forward no HTTP header as metadata: the identity is the only
		// metadata the server acts on, and only the gateway sets it.
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithOutgoingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithMetadata(forwardIdentity),
	)
	g = &Gateway{conn: conn, mux: mux, marshaler: marshaler, tlsCfg: tlsCfg.Clone(), limits: o.Limits.withDefaults()}
	for _, register := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		custodyv1gw.RegisterCryptoServiceHandler,
		custodyv1gw.RegisterKeyServiceHandler,
		custodyv1gw.RegisterDataKeyServiceHandler,
	} {
		if err := register(ctx, mux, conn); err != nil {
			conn.Close()
			return nil, fmt.Errorf("gateway: register handlers: %w", err)
		}
	}
	g.handler = http.HandlerFunc(g.serveHTTP)
	lim := g.limits
	g.srv = &http.Server{
		// A connection counted by a netlimit budget (custodyd's listener)
		// stops being a pending handshake at its first whole request.
		Handler:           netlimit.EstablishOnRequest(g.handler),
		ConnContext:       netlimit.ConnContext,
		TLSConfig:         g.tlsCfg,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: int(lim.MaxStreams)},
		ErrorLog:          log.New(newQuietWriter(slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn).Writer(), 10), "", 0),
	}
	return g, nil
}

// Handler returns the gateway's HTTP handler. It refuses (401) any request
// whose TLS state has no verified client certificate, so it must be served
// behind a TLS listener configured as New requires; Serve does that.
func (g *Gateway) Handler() http.Handler { return g.handler }

func (g *Gateway) serveHTTP(w http.ResponseWriter, r *http.Request) {
	id, err := identity(r)
	if err != nil {
		runtime.HTTPError(r.Context(), g.mux, g.marshaler, w, r, status.Error(codes.Unauthenticated, err.Error()))
		return
	}
	// What the server also checks about the certificate: the key it
	// carries (grants may pin it) and the CAs its verified chains end at
	// (the ceremony fixes which are trusted).
	leaf := r.TLS.VerifiedChains[0][0]
	facts := certFacts{spki: pki.SPKIHash(leaf), roots: strings.Join(pki.ChainRoots(r.TLS.VerifiedChains), ",")}
	// The body is read whole, within its bound and ReadTimeout, before
	// anything is forwarded: an oversized one is refused with 413 (not a
	// decoding error), and a slow one never holds a gRPC call open.
	if r.ContentLength > g.limits.MaxBodyBytes {
		g.tooLarge(w, r)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.limits.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			g.tooLarge(w, r)
			return
		}
		runtime.HTTPError(r.Context(), g.mux, g.marshaler, w, r, status.Error(codes.InvalidArgument, "reading request body: "+err.Error()))
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	ctx := context.WithValue(context.WithValue(context.WithValue(r.Context(), identityKey{}, id), certFactsKey{}, facts), forwardedKey{}, new(atomic.Bool))
	g.mux.ServeHTTP(w, r.WithContext(ctx))
}

// forwardedKey holds, in a request's context, an *atomic.Bool set once the
// request is forwarded to custodyd's gRPC server.
type forwardedKey struct{}

// markForwarded is the in-process connection's interceptor: it notes that
// the request reached the gRPC server (whose interceptors audit it).
func markForwarded(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if f, ok := ctx.Value(forwardedKey{}).(*atomic.Bool); ok {
		f.Store(true)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// undecodableMessage is protobuf that no server decodes (field 1 claims
// more bytes than follow). It stands in for a JSON body that did not
// decode, so that custodyd's gRPC server records the request as it records
// an undecodable gRPC request: the caller's identity, the method,
// InvalidArgument.
var undecodableMessage = []byte{0x0a, 0x7f}

// auditUndecoded has custodyd's gRPC server record a REST request refused
// for its body before it was forwarded (err is InvalidArgument and the
// route names a method); any other error was either answered by the server
// (and audited there) or names no method.
func (g *Gateway) auditUndecoded(ctx context.Context, r *http.Request, err error) {
	f, ok := r.Context().Value(forwardedKey{}).(*atomic.Bool)
	id, _ := r.Context().Value(identityKey{}).(string)
	method, hasMethod := runtime.RPCMethod(ctx)
	if !ok || f.Load() || id == "" || !hasMethod || status.Code(err) != codes.InvalidArgument {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	defer cancel()
	cctx = metadata.NewOutgoingContext(cctx, forwardIdentity(r.Context(), r)) // identity and certificate facts, as forwarded requests carry
	req, reply := append([]byte(nil), undecodableMessage...), []byte(nil)
	_ = g.conn.Invoke(cctx, method, &req, &reply, grpc.ForceCodecV2(rawCodec{}))
}

// rawCodec passes pre-encoded bytes (*[]byte) through unchanged.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// tooLarge answers 413 with the gateway's JSON error body and closes the
// connection (the rest of the body is not read).
func (g *Gateway) tooLarge(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusRequestEntityTooLarge)
	st := status.Newf(codes.ResourceExhausted, "request body larger than %d bytes", g.limits.MaxBodyBytes)
	if b, err := g.marshaler.Marshal(st.Proto()); err == nil {
		w.Write(b)
	}
}

// identity derives the caller's identity from its verified client certificate.
func identity(r *http.Request) (string, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return "", ErrClientCert
	}
	id, err := pki.Identity(r.TLS.VerifiedChains[0][0])
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrClientCert, err)
	}
	return id, nil
}

// forwardIdentity is the mux's metadata annotator: the identity serveHTTP
// verified, and nothing else. grpc-gateway lets annotator keys replace any
// header-derived ones; no header is forwarded anyway.
func forwardIdentity(ctx context.Context, _ *http.Request) metadata.MD {
	id, _ := ctx.Value(identityKey{}).(string)
	if id == "" {
		return nil
	}
	f, _ := ctx.Value(certFactsKey{}).(certFacts)
	return metadata.Pairs(IdentityMetadataKey, id, SPKIMetadataKey, f.spki, RootsMetadataKey, f.roots)
}

// Serve accepts HTTPS connections on lis with the TLS configuration given
// to New and serves the gateway until Shutdown. It returns
// http.ErrServerClosed after Shutdown.
func (g *Gateway) Serve(lis net.Listener) error {
	return g.srv.ServeTLS(lis, "", "")
}

// Shutdown stops accepting requests, waits for in-flight ones (bounded by
// ctx) and closes the in-process connection.
func (g *Gateway) Shutdown(ctx context.Context) error {
	return errors.Join(g.srv.Shutdown(ctx), g.conn.Close())
}
