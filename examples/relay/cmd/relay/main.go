// Command relay runs the example message relay (package relay) against a
// custodyd: it stores each conversation encrypted under its own data key
// from Custody and serves a small HTTP API. Against `make run`:
//
//	go run ./examples/relay/cmd/relay \
//	  -custody 127.0.0.1:8443 -ca .custody-dev/pki/ca.pem \
//	  -cert .custody-dev/pki/relay.pem -key .custody-dev/pki/relay-key.pem \
//	  -key-name demo -tenant acme -db /tmp/relay.db -listen 127.0.0.1:8080
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/custodyhq/custody/client"
	"github.com/custodyhq/custody/examples/relay"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("custody", "127.0.0.1:8443", "custodyd gRPC address")
	ca := flag.String("ca", "", "CA certificate that issued custodyd's certificate (PEM)")
	cert := flag.String("cert", "", "this relay's client certificate (PEM)")
	key := flag.String("key", "", "this relay's client key (PEM)")
	keyName := flag.String("key-name", "demo", "Custody key that wraps conversation data keys")
	tenant := flag.String("tenant", "", "tenant bound into every data key's encryption context")
	db := flag.String("db", "relay.db", "message store (bbolt file)")
	listen := flag.String("listen", "127.0.0.1:8080", "HTTP listen address")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := client.Dial(dialCtx, client.Config{Addr: *addr, CAFile: *ca, CertFile: *cert, KeyFile: *key, ServerName: "localhost", Block: true})
	cancel()
	if err != nil {
		return fmt.Errorf("dial custodyd: %w", err)
	}
	defer c.Close()
	r, err := relay.Open(c, relay.Config{KeyName: *keyName, Tenant: *tenant, DBPath: *db})
	if err != nil {
		return err
	}
	defer r.Close()

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: r.Handler(log), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Info("relay serving", "http", lis.Addr().String(), "custody", *addr, "key", *keyName, "tenant", *tenant)
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
