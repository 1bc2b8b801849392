package main

import (
	"crypto/tls"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/custodyhq/custody/client"
)

// addrFlag is --addr: the first use replaces the default, each further use
// adds a replica, and each value may itself be a comma list.
type addrFlag struct {
	p   *string
	set bool
}

func (f *addrFlag) String() string {
	if f.p == nil {
		return ""
	}
	return *f.p
}

func (f *addrFlag) Set(v string) error {
	if !f.set {
		*f.p, f.set = v, true
		return nil
	}
	*f.p += "," + v
	return nil
}

func (f *addrFlag) Type() string { return "host:port" }

// dial connects to every replica named by --addr, balancing calls over the
// healthy ones and retrying UNAVAILABLE on another (client.BalancedRetryingTarget).
func (a *app) dial(cfg *tls.Config) (*grpc.ClientConn, error) {
	target, opts, err := client.BalancedRetryingTarget(client.Endpoints(a.addr), "")
	if err != nil {
		return nil, usageErrorf("--addr %q: %v", a.addr, strings.TrimPrefix(err.Error(), client.ErrConfig.Error()+": "))
	}
	conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))...)
	if err != nil {
		return nil, usageErrorf("address %q: %v", a.addr, err)
	}
	return conn, nil
}
