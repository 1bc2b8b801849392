package client

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/health" // client-side health checking for the balancer
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// balancedServiceConfig spreads calls over every replica with round_robin and
// watches each replica's gRPC health service: a replica that reports
// NOT_SERVING (custodyd does while its etcd store is unreachable, and while
// shutting down) gets no new calls until it reports SERVING again. A server
// without the health service counts as healthy.
const balancedServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "healthCheckConfig": {"serviceName": ""}
}`

// Endpoints splits an address setting into replica addresses: a comma
// separated list of host:port, blanks and repeats dropped, order kept.
func Endpoints(addrs ...string) []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range addrs {
		for _, e := range strings.Split(a, ",") {
			e = strings.TrimSpace(e)
			if e != "" && !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
	}
	return out
}

// BalancedTarget returns the gRPC target and dial options that reach every
// one of endpoints (host:port each), balancing calls across the healthy ones.
//
// One endpoint is resolved through DNS, so a name with several addresses (a
// headless Kubernetes Service, round-robin DNS) reaches all of them, and is
// re-resolved when connections fail. Several endpoints are used as given,
// each verified against its own host name (or serverName when set).
// Retrying an UNAVAILABLE call (see Config.MaxAttempts) then lands on the
// next healthy replica.
func BalancedTarget(endpoints []string, serverName string) (string, []grpc.DialOption, error) {
	return balancedTarget(endpoints, serverName, balancedServiceConfig)
}

// retryingServiceConfig is balancedServiceConfig plus gRPC's own retry of
// UNAVAILABLE (up to 4 attempts, each on the next healthy replica), for
// callers that do not use Dial's retry interceptor. RotateKey, which is not
// safe to repeat, is excluded.
const retryingServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "healthCheckConfig": {"serviceName": ""},
  "methodConfig": [
    {"name": [{}], "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}},
    {"name": [{"service": "custody.v1.KeyService", "method": "RotateKey"}]}
  ]
}`

// BalancedRetryingTarget is BalancedTarget for plain gRPC connections
// (custodyctl): calls that fail with UNAVAILABLE are also retried by gRPC
// itself on another replica, except KeyService.RotateKey.
func BalancedRetryingTarget(endpoints []string, serverName string) (string, []grpc.DialOption, error) {
	return balancedTarget(endpoints, serverName, retryingServiceConfig)
}

func balancedTarget(endpoints []string, serverName, serviceConfig string) (string, []grpc.DialOption, error) {
	opts := []grpc.DialOption{grpc.WithDefaultServiceConfig(serviceConfig)}
	switch len(endpoints) {
	case 0:
		return "", nil, fmt.Errorf("%w: no custodyd address", ErrConfig)
	case 1:
		if strings.Contains(endpoints[0], "://") {
			return endpoints[0], opts, nil // an explicit gRPC target (dns:///, unix://)
		}
		host, _, err := net.SplitHostPort(endpoints[0])
		if err != nil {
			return "", nil, fmt.Errorf("%w: address %q is not host:port", ErrConfig, endpoints[0])
		}
		if net.ParseIP(host) != nil {
			// One address: nothing to balance or to fail over to, so no
			// health watch (which a server without the health service
			// would answer with a logged error).
			return "dns:///" + endpoints[0], nil, nil
		}
		return "dns:///" + endpoints[0], opts, nil
	}
	addrs := make([]resolver.Address, len(endpoints))
	for i, e := range endpoints {
		host, _, err := net.SplitHostPort(e)
		if err != nil {
			return "", nil, fmt.Errorf("%w: address %q is not host:port", ErrConfig, e)
		}
		name := serverName
		if name == "" {
			name = host
		}
		addrs[i] = resolver.Address{Addr: e, ServerName: name}
	}
	// A scheme of our own per connection: manual resolvers registered
	// through WithResolvers are local to this ClientConn.
	var b [8]byte
	_, _ = rand.Read(b[:])
	r := manual.NewBuilderWithScheme("custody-" + hex.EncodeToString(b[:]))
	r.InitialState(resolver.State{Addresses: addrs})
	opts = append(opts, grpc.WithResolvers(r))
	return r.Scheme() + ":///custody", opts, nil
}
