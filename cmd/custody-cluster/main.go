// Command custody-cluster runs a development cluster on loopback for
// `make cluster`: three etcd members and three custodyd replicas sharing one
// SoftHSM token, then prints how to use it and stops everything on Ctrl-C.
//
//	custody-cluster [--dir .custody-cluster] [--replicas 3] [--base-port 8451]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/custodyhq/custody/internal/devcluster"
	"github.com/custodyhq/custody/internal/store/etcdtest"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("custody-cluster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", ".custody-cluster", "directory of the cluster (wiped at start)")
	replicas := fs.Int("replicas", 3, "custodyd replicas")
	basePort := fs.Int("base-port", 8451, "gRPC port of replica 0 (replica i: base+i; metrics/health: base+100+i)")
	custodyd := fs.String("custodyd", "bin/custodyd", "custodyd binary")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	root, err := etcdtest.Root()
	if err != nil {
		fmt.Fprintf(stderr, "custody-cluster: %v\n", err)
		return 1
	}
	etcdBin, err := etcdtest.EnsureBinary(root, func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) })
	if err != nil {
		fmt.Fprintf(stderr, "custody-cluster: %v\n", err)
		return 1
	}
	bin, err := filepath.Abs(*custodyd)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintf(stderr, "custody-cluster: custodyd binary: %v (run make build)\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	c, err := devcluster.Start(ctx, devcluster.Options{
		Dir: *dir, Custodyd: bin, Etcd: etcdBin, Replicas: *replicas, BasePort: *basePort, Log: stderr,
	})
	if err != nil {
		fmt.Fprintf(stderr, "custody-cluster: %v\n", err)
		return 1
	}
	printCluster(stdout, c)
	<-ctx.Done()
	fmt.Fprintln(stderr, "stopping: custodyd replicas (in-flight requests finish), then etcd ...")
	done := make(chan struct{})
	go func() { c.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		fmt.Fprintln(stderr, "custody-cluster: stop timed out")
		return 1
	}
	return 0
}

func printCluster(w io.Writer, c *devcluster.Cluster) {
	rel := func(p string) string {
		if wd, err := os.Getwd(); err == nil {
			if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
				return r
			}
		}
		return p
	}
	relay, op := c.Setup.PKI.Clients["relay"], c.Setup.PKI.Clients["operator"]
	var reps strings.Builder
	for _, r := range c.Replicas {
		fmt.Fprintf(&reps, "  replica %d: gRPC %s  metrics/health http://%s/metrics /readyz  (log %s, pid file %s)\n",
			r.Index, r.GRPCAddr, r.HTTPAddr, rel(r.LogFile), rel(filepath.Join(r.Dir, "pid")))
	}
	fmt.Fprintf(w, `
Custody development cluster is running (in %s; NOT for production):
  etcd (TLS, 3 members): %s  prefix %s
%s  Every replica shares one SoftHSM token and the etcd prefix; each keeps its own audit log.
  Changes propagate: a key, grant, budget, freeze or proposal made through one replica is in
  force on every replica within milliseconds (each follows etcd's watch), budgets hold across
  all replicas together, and one elected replica runs time-locks and key destruction.

As the dev relay, in another shell (calls are spread over the replicas):
  export CUSTODY_ADDR=%s CUSTODY_CA=%s
  export CUSTODY_CERT=%s CUSTODY_KEY=%s
  echo 'hello, cluster' | bin/custodyctl crypto encrypt --key demo | bin/custodyctl crypto decrypt --key demo
  bin/custodyctl status            # one line per replica

Stop one replica and keep going (the client moves to the others):
  kill $(cat %s)

As the dev operator:
  CUSTODY_CERT=%s CUSTODY_KEY=%s bin/custodyctl key list

Stop everything with Ctrl-C (replicas first, then etcd).
`, rel(c.Dir), strings.Join(c.Etcd.Endpoints(), ","), c.Prefix, reps.String(),
		strings.Join(c.Addrs(), ","), rel(c.Setup.PKI.CAFile), rel(relay.CertFile), rel(relay.KeyFile),
		rel(filepath.Join(c.Replicas[len(c.Replicas)-1].Dir, "pid")),
		rel(op.CertFile), rel(op.KeyFile))
}
