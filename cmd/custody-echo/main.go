// Command custody-echo is the bare gRPC baseline of `make bench`: a
// CryptoService that answers Encrypt, Decrypt and BatchDecrypt by echoing
// the input (no HSM, no authorisation, no audit), over mutual TLS exactly as
// custodyd sets it up (pki.ServerTLSConfig: TLS 1.3, a verified client
// certificate) and with custodyd's gRPC transport options. `custodyctl bench
// --echo-addr` runs the same workload against it as against custodyd, so
// vault/echo says what the vault's own work costs beyond gRPC and TLS.
//
//	custody-echo --cert server.pem --key server-key.pem --client-ca ca.pem
//
// It prints "custody-echo serving on HOST:PORT" and serves until SIGINT or
// SIGTERM. It holds no key and is for benchmarks only.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/pki"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("custody-echo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	cert := fs.String("cert", "", "server certificate (PEM), as custodyd's tls.cert_file")
	key := fs.String("key", "", "server key (PEM), as custodyd's tls.key_file")
	clientCA := fs.String("client-ca", "", "CA of accepted client certificates, as custodyd's tls.client_ca_file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || *cert == "" || *key == "" || *clientCA == "" {
		fmt.Fprintln(stderr, "custody-echo: --cert, --key and --client-ca are required, and nothing else")
		return 2
	}
	tlsCfg, err := pki.ServerTLSConfig(*cert, *key, *clientCA)
	if err != nil {
		fmt.Fprintf(stderr, "custody-echo: %v\n", err)
		return 1
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "custody-echo: %v\n", err)
		return 1
	}
	srv := newServer(tlsCfg)
	fmt.Fprintf(stdout, "custody-echo serving on %s\n", lis.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case <-ctx.Done():
		srv.Stop()
		return 0
	case err := <-errc:
		if errors.Is(err, grpc.ErrServerStopped) {
			return 0
		}
		fmt.Fprintf(stderr, "custody-echo: %v\n", err)
		return 1
	}
}

// newServer is a gRPC server with custodyd's transport options (see
// internal/daemon: message size, streams per connection, stream workers).
func newServer(tlsCfg *tls.Config) *grpc.Server {
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.MaxRecvMsgSize(16<<20),
		grpc.MaxConcurrentStreams(128),
		grpc.NumStreamWorkers(uint32(max(32, 8*runtime.GOMAXPROCS(0)))),
	)
	custodyv1.RegisterCryptoServiceServer(srv, echo{})
	return srv
}

// echo answers with what it was sent.
type echo struct {
	custodyv1.UnimplementedCryptoServiceServer
}

func (echo) Encrypt(_ context.Context, req *custodyv1.EncryptRequest) (*custodyv1.EncryptResponse, error) {
	return &custodyv1.EncryptResponse{Ciphertext: req.GetPlaintext(), KeyVersion: 1}, nil
}

func (echo) Decrypt(_ context.Context, req *custodyv1.DecryptRequest) (*custodyv1.DecryptResponse, error) {
	return &custodyv1.DecryptResponse{Plaintext: req.GetCiphertext(), KeyVersion: 1}, nil
}

func (echo) BatchDecrypt(_ context.Context, req *custodyv1.BatchDecryptRequest) (*custodyv1.BatchDecryptResponse, error) {
	out := &custodyv1.BatchDecryptResponse{Results: make([]*custodyv1.BatchDecryptResult, len(req.GetItems()))}
	for i, it := range req.GetItems() {
		out.Results[i] = &custodyv1.BatchDecryptResult{Result: &custodyv1.BatchDecryptResult_Response{
			Response: &custodyv1.DecryptResponse{Plaintext: it.GetCiphertext(), KeyVersion: 1}}}
	}
	return out, nil
}
