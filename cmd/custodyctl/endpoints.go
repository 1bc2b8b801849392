package main

import (
	"crypto/tls"
	"io"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/grpclog"

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
	conn, err := grpc.NewClient(target, append(opts, explainedTLS(cfg)...)...)
	if err != nil {
		return nil, usageErrorf("address %q: %v", a.addr, err)
	}
	return conn, nil
}

// quietGRPCLog keeps gRPC's own log lines (e.g. a replica without the health
// service) off stderr, where custodyctl promises one line per failure; every
// failure still arrives as a call's status. GRPC_GO_LOG_SEVERITY_LEVEL turns
// them back on for debugging.
func quietGRPCLog() {
	if os.Getenv("GRPC_GO_LOG_SEVERITY_LEVEL") == "" {
		grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard))
	}
}
