// Package gateway serves Custody's REST/JSON API (grpc-gateway v2, rules in
// api/custody/v1/gateway.yaml) over HTTPS with mTLS, for relays not written
// in Go. It never calls the service implementation: each HTTP request is
// forwarded to custodyd's own gRPC server over an in-process connection, so
// it passes the same interceptor chain (authentication, authorisation,
// budgets, durable audit) as a gRPC call.
//
// Invariants:
//   - The caller's identity is derived by the gateway from the verified leaf
//     of its mTLS client certificate (pki.Identity) and carried to the gRPC
//     server as the metadata key IdentityMetadataKey. A request without a
//     verified client certificate is refused before anything is forwarded.
//   - The gRPC server believes that metadata only on connections accepted
//     from this package's in-process Listener, which has no network address;
//     those connections are recognised by their AuthInfo type, which only
//     ServerCredentials produces and only for such connections. On any other
//     connection (the public mTLS port) a request carrying the key is refused,
//     never silently taken or dropped.
//   - No HTTP header is forwarded as gRPC metadata, so an HTTP client cannot
//     supply or add to the forwarded identity.
//   - A request refused because its body does not decode is still recorded
//     by custodyd's gRPC server (as an undecodable request of its method,
//     under the caller's identity), as every request that reaches custodyd is.
package gateway

import (
	"context"
	"errors"
	"net"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/test/bufconn"
)

// IdentityMetadataKey is the gRPC metadata key that carries the identity the
// gateway verified. It is honoured only on in-process gateway connections.
const IdentityMetadataKey = "x-custody-gateway-identity"

// SPKIMetadataKey and RootsMetadataKey carry, beside the identity, the
// lower-case hex SHA-256 of the verified leaf's SubjectPublicKeyInfo and the
// comma-separated fingerprints of the CAs its verified chains end at (see
// pki.SPKIHash, pki.ChainRoots): what the server checks of a certificate
// besides its identity. Honoured, like the identity, only on in-process
// gateway connections.
const (
	SPKIMetadataKey  = "x-custody-gateway-spki"
	RootsMetadataKey = "x-custody-gateway-roots"
)

// Cert is what the gateway forwards about the HTTP caller's verified
// client certificate.
type Cert struct {
	Identity string
	SPKI     string   // pki.SPKIHash of the leaf
	Roots    []string // pki.ChainRoots of the verified chains
}

// ForwardedCert is ForwardedIdentity with the certificate's key and chain
// roots. On any connection other than the gateway's in-process one, any of
// the forwarded keys is refused (ErrForgedIdentity).
func ForwardedCert(ctx context.Context) (c Cert, ok bool, err error) {
	id, ok, err := ForwardedIdentity(ctx)
	md, _ := metadata.FromIncomingContext(ctx)
	if !ok {
		if err == nil && (len(md.Get(SPKIMetadataKey)) > 0 || len(md.Get(RootsMetadataKey)) > 0) {
			err = ErrForgedIdentity
		}
		return Cert{}, false, err
	}
	if err != nil {
		return Cert{}, true, err
	}
	c.Identity = id
	if v := md.Get(SPKIMetadataKey); len(v) == 1 {
		c.SPKI = v[0]
	}
	if v := md.Get(RootsMetadataKey); len(v) == 1 && v[0] != "" {
		c.Roots = strings.Split(v[0], ",")
	}
	return c, true, nil
}

// Sentinel errors.
var (
	// ErrForgedIdentity: a request on a connection that is not the gateway's
	// in-process connection carried IdentityMetadataKey.
	ErrForgedIdentity = errors.New("forwarded identity is not accepted on this connection")
	// ErrNoForwardedIdentity: a request on the gateway's in-process connection
	// carried no identity, or more than one.
	ErrNoForwardedIdentity = errors.New("gateway request carries no single forwarded identity")
	// ErrClientCert: an HTTP request arrived without a verified client certificate.
	ErrClientCert = errors.New("no verified client certificate")
	// ErrInsecureTLS: the gateway was given a TLS configuration that does not
	// require and verify client certificates.
	ErrInsecureTLS = errors.New("gateway tls config must require and verify client certificates")
)

// AuthType is what the AuthInfo of an in-process gateway connection reports.
const AuthType = "custody-gateway"

// internalAuthInfo marks a connection accepted from the in-process Listener.
// Unexported, so that no other package can construct one.
type internalAuthInfo struct{ credentials.CommonAuthInfo }

func (internalAuthInfo) AuthType() string { return AuthType }

// ForwardedIdentity returns the identity the gateway forwarded with a gRPC
// request. ok is true only on an in-process gateway connection, and then
// the identity is the one verified from the HTTP caller's client
// certificate; err is ErrNoForwardedIdentity if it is missing or repeated.
// On any other connection ok is false, and err is ErrForgedIdentity if the
// request nevertheless carries the identity key. Call it from the server's
// authentication step before looking at the TLS peer.
func ForwardedIdentity(ctx context.Context) (identity string, ok bool, err error) {
	// Only this key's values (any letter case), without copying the
	// request's whole metadata.
	vals := metadata.ValueFromIncomingContext(ctx, IdentityMetadataKey)
	p, hasPeer := peer.FromContext(ctx)
	if !hasPeer || p.AuthInfo == nil {
		if len(vals) > 0 {
			return "", false, ErrForgedIdentity
		}
		return "", false, nil
	}
	if _, internal := p.AuthInfo.(internalAuthInfo); !internal {
		if len(vals) > 0 {
			return "", false, ErrForgedIdentity
		}
		return "", false, nil
	}
	if len(vals) != 1 || vals[0] == "" {
		return "", true, ErrNoForwardedIdentity
	}
	return vals[0], true, nil
}

// Listener is an in-process listener for the gateway's connection to the
// gRPC server: it has no network address, so nothing outside the process
// can connect to it. Serve the custodyd gRPC server on it (the same
// grpc.Server as the public port, built with ServerCredentials).
type Listener struct {
	*bufconn.Listener
}

// listenerBuffer is each direction's buffer on an in-process connection.
const listenerBuffer = 1 << 20

// NewListener returns an in-process Listener.
func NewListener() *Listener {
	return &Listener{Listener: bufconn.Listen(listenerBuffer)}
}

// internalConn is a connection accepted from a Listener; its type is what
// ServerCredentials recognises.
type internalConn struct{ net.Conn }

// Accept waits for the gateway to connect and returns the server side.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &internalConn{Conn: c}, nil
}

// ServerCredentials wraps the public port's transport credentials (TLS) for
// the one grpc.Server that serves both the public listener and the
// gateway's Listener: connections from a Listener skip the TLS handshake and
// are marked as gateway connections; every other connection is handed to
// tls unchanged.
func ServerCredentials(tls credentials.TransportCredentials) credentials.TransportCredentials {
	return &serverCreds{TransportCredentials: tls}
}

type serverCreds struct {
	credentials.TransportCredentials
}

func (c *serverCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if ic, ok := raw.(*internalConn); ok {
		return ic, internalAuthInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
	}
	return c.TransportCredentials.ServerHandshake(raw)
}

func (c *serverCreds) Clone() credentials.TransportCredentials {
	return &serverCreds{TransportCredentials: c.TransportCredentials.Clone()}
}
