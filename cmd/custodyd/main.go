// Command custodyd is Custody's key vault daemon: a gRPC service over mTLS
// that keeps master keys in an HSM reached over PKCS#11.
//
//	custodyd --config /etc/custody/custodyd.yaml
//	custodyd --dev [--dev-dir .custody-dev]
//	custodyd --version
//
// The HSM PIN is read from the file or environment variable the config
// names; there is deliberately no flag for it. With neither, a production
// custodyd starts sealed: it prints its unseal key's fingerprint and waits
// for M officers (custodyctl unseal), or for its key ceremony.
//
// Before anything else custodyd makes itself non-dumpable (no core files,
// no ptrace or /proc/PID/mem for processes without CAP_SYS_PTRACE), sets
// RLIMIT_CORE to 0 and, where the memory lock limit allows, locks all its
// memory out of swap; what was refused is logged as a warning.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/seal"
	"github.com/custodyhq/custody/internal/secmem"
	"github.com/custodyhq/custody/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("custodyd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "path of the YAML configuration")
	dev := fs.Bool("dev", false, "start a development vault on SoftHSM + bbolt with generated certificates")
	devDir := fs.String("dev-dir", ".custody-dev", "directory of the development vault (with --dev)")
	devListen := fs.String("dev-listen", "127.0.0.1:8443", "gRPC address (with --dev)")
	devHTTP := fs.String("dev-http", "127.0.0.1:9090", "metrics/health address (with --dev)")
	devGateway := fs.String("dev-gateway", "", "REST/JSON gateway address (with --dev; default: the port after --dev-listen, \"off\" to disable)")
	pprof := fs.Bool("pprof", false, "serve /debug/pprof on the (loopback-only) HTTP listener")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	showVersion := fs.Bool("version", false, "print the version and the commit custodyd was built from, and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version.Read().String("custodyd"))
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "custodyd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "custodyd: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(log)
	hardening := secmem.Harden(true)
	for _, p := range hardening.Problems {
		log.Warn("memory hygiene: " + p)
	}

	var cfg *config.Config
	var setup *daemon.DevSetup
	var err error
	switch {
	case *dev && *cfgPath != "":
		fmt.Fprintln(stderr, "custodyd: give either --config or --dev, not both")
		return 2
	case *dev:
		setup, cfg, err = daemon.PrepareDev(*devDir, *devListen, *devHTTP)
		if err == nil && *devGateway != "" {
			cfg.GatewayListen = *devGateway
			if *devGateway == "off" {
				cfg.GatewayListen = ""
			}
			err = cfg.Validate()
		}
	case *cfgPath != "":
		cfg, err = config.Load(*cfgPath)
	default:
		fmt.Fprintln(stderr, "custodyd: --config FILE is required (or --dev for a development vault)")
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "custodyd: %v\n", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	d, err := daemon.Start(startCtx, cfg, daemon.Options{Logger: log, Pprof: *pprof, Hardening: &hardening})
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "custodyd: %v\n", err)
		return 1
	}
	if setup != nil {
		printDev(stdout, setup, d)
	} else if cfg.HSM.Sealed() {
		printSealed(stdout, d)
	}
	<-ctx.Done()
	log.Info("shutting down: finishing in-flight requests")
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := d.Shutdown(sctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "custodyd: shutdown: %v\n", err)
		return 1
	}
	return 0
}

func printDev(w io.Writer, s *daemon.DevSetup, d *daemon.Daemon) {
	rel := func(p string) string {
		if wd, err := os.Getwd(); err == nil {
			if r, err := relPath(wd, p); err == nil {
				return r
			}
		}
		return p
	}
	relay := s.PKI.Clients["relay"]
	op := s.PKI.Clients["operator"]
	fmt.Fprintf(w, `
Custody dev vault is running (SoftHSM token + bbolt in %s; NOT for production).
  gRPC (mTLS): %s    REST/JSON gateway (mTLS): %s
  metrics/health: http://%s/metrics /healthz /readyz

As the dev relay (granted keys %q: encrypt and data keys; %q: sign; %q: MAC), in another shell:
  export CUSTODY_ADDR=%s CUSTODY_CA=%s
  export CUSTODY_CERT=%s CUSTODY_KEY=%s
  echo 'hello, custody' | bin/custodyctl crypto encrypt --key %s | bin/custodyctl crypto decrypt --key %s

As the dev operator (manages keys):
  CUSTODY_CERT=%s CUSTODY_KEY=%s bin/custodyctl key list

Stop with Ctrl-C (in-flight requests finish first).
`, rel(s.Dir), d.GRPCAddr(), gatewayAddr(d), d.HTTPAddr(), daemon.DevKey, daemon.DevSignKey, daemon.DevMACKey,
		d.GRPCAddr(), rel(s.PKI.CAFile), rel(relay.CertFile), rel(relay.KeyFile), daemon.DevKey, daemon.DevKey,
		rel(op.CertFile), rel(op.KeyFile))
}

// printSealed tells the console what a sealed custodyd waits for. The
// fingerprint is what officers compare before they send a share (or the
// installer their PIN): custodyctl shows the one it encrypts to.
func printSealed(w io.Writer, d *daemon.Daemon) {
	st := d.Seal.Status()
	fmt.Fprintf(w, "\ncustodyd is SEALED.\n  gRPC (mTLS): %s    metrics/health: %s\nIt serves nothing until ", d.GRPCAddr(), d.HTTPAddr())
	if st.GetState() == custodyv1.SealState_SEAL_STATE_AWAITING_CEREMONY {
		fmt.Fprintf(w, "its key ceremony has run:\n  custodyctl ceremony init --config ceremony.yaml --transcript-out DIR   (asks for the installer's HSM PIN)\n")
	} else {
		fmt.Fprintf(w, "%d officers have sent their shares:\n  custodyctl unseal --officer-key FILE   (each officer, with the officer's mTLS certificate)\n", st.GetSharesNeeded())
	}
	fmt.Fprintf(w, "Unseal key fingerprint (compare with what custodyctl shows):\n  %s\n\n", seal.FormatFingerprint(st.GetUnsealKeyFingerprint()))
}

func gatewayAddr(d *daemon.Daemon) string {
	if a := d.GatewayAddr(); a != "" {
		return "https://" + a + "/v1/"
	}
	return "off"
}
