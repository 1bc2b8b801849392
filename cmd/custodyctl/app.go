package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/client"
	"github.com/custodyhq/custody/internal/version"
)

// Environment variables that give global flags their defaults.
const (
	envAddr   = "CUSTODY_ADDR"
	envCA     = "CUSTODY_CA"
	envCert   = "CUSTODY_CERT"
	envKey    = "CUSTODY_KEY"
	envOutput = "CUSTODY_OUTPUT"

	defaultAddr    = "127.0.0.1:8443"
	defaultTimeout = 30 * time.Second
)

// app is one invocation's state: global options, streams and the lazily
// opened connection.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	addr, caFile, certFile, keyFile string
	timeout                         time.Duration
	output                          string

	conn *grpc.ClientConn

	// noProgress (--no-progress) never draws progress.
	noProgress bool
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func (a *app) rootCommand() *cobra.Command {
	root := groupCommand("custodyctl", "Client for the Custody key vault (custodyd)",
		a.keyCommand(), a.cryptoCommand(), a.statusCommand(), a.storedKeyCommand(),
		a.auditCommand(),
		a.officerCommand(),
		a.proposalCommand(),
		a.grantCommand(), a.budgetCommand(), a.orderCommand(),
		a.ceremonyCommand(),
		a.unsealCommand(),
		a.sealCommand(),
		a.benchCommand(),
		a.hsmCommand())
	root.Long = `custodyctl talks to custodyd over gRPC with mutual TLS 1.3.
Every command needs a CA bundle, a client certificate and its private key
(--ca/--cert/--key or CUSTODY_CA/CUSTODY_CERT/CUSTODY_KEY). Under "crypto",
--key names the vault key; give the client key there as --tls-key or
CUSTODY_KEY.`
	root.SilenceErrors = true
	root.SilenceUsage = true
	// "custodyctl completion bash|zsh|fish|powershell" prints a completion
	// script (see its --help for where to put it).
	root.CompletionOptions.HiddenDefaultCmd = false
	root.Version = version.Read().String("custodyctl")
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		if s := suggestFlag(cmd, err); s != "" {
			return usageErrorf("%v; did you mean %s?", err, s)
		}
		return usageErrorf("%v", err)
	})
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		switch a.output {
		case "text", "json":
			return nil
		}
		return usageErrorf("--output must be text or json, not %q", a.output)
	}

	pf := root.PersistentFlags()
	pf.Var(&addrFlag{p: &a.addr}, "addr", "custodyd address host:port; repeat the flag or give a comma list for several replicas ($"+envAddr+", default "+defaultAddr+")")
	a.addr = envOr(envAddr, defaultAddr)
	pf.StringVar(&a.caFile, "ca", envOr(envCA, ""), "PEM file of CA certificates that issued custodyd's certificate ($"+envCA+")")
	pf.StringVar(&a.certFile, "cert", envOr(envCert, ""), "PEM client certificate ($"+envCert+")")
	pf.StringVar(&a.keyFile, "key", envOr(envKey, ""), "PEM private key of the client certificate ($"+envKey+"); under crypto, use --tls-key")
	pf.StringVar(&a.keyFile, "tls-key", envOr(envKey, ""), "same as --key (the client certificate's private key)")
	pf.DurationVar(&a.timeout, "timeout", defaultTimeout, "deadline for each call to custodyd; 0 for none")
	pf.StringVarP(&a.output, "output", "o", envOr(envOutput, "text"), "output format: text or json ($"+envOutput+")")
	pf.BoolVar(&a.noProgress, "no-progress", false, "never draw a progress line on stderr (drawn for files over 16 MiB when stderr is a terminal)")
	return root
}

// tlsConfig builds the mTLS client configuration, refusing to run without
// all three files: custodyctl never talks to custodyd without mTLS.
func (a *app) tlsConfig() (*tls.Config, error) {
	var missing []string
	for _, f := range []struct{ val, flag, env string }{
		{a.caFile, "--ca", envCA}, {a.certFile, "--cert", envCert}, {a.keyFile, "--key/--tls-key", envKey},
	} {
		if f.val == "" {
			missing = append(missing, f.flag+" ($"+f.env+")")
		}
	}
	if len(missing) > 0 {
		return nil, usageErrorf("mutual TLS is required: missing %s", strings.Join(missing, ", "))
	}
	caPEM, err := os.ReadFile(a.caFile)
	if err != nil {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("read CA file: %w", err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("CA file %s holds no PEM certificate", a.caFile))
	}
	pair, err := tls.LoadX509KeyPair(a.certFile, a.keyFile)
	if err != nil {
		// The error names files and formats, never key bytes.
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("load client certificate and key: %w", err))
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		RootCAs:      pool,
		Certificates: []tls.Certificate{pair},
	}, nil
}

// connect opens (once) the connection to custodyd.
func (a *app) connect() (*grpc.ClientConn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	cfg, err := a.tlsConfig()
	if err != nil {
		return nil, err
	}
	conn, err := a.dial(cfg)
	if err != nil {
		return nil, err
	}
	a.conn = conn
	return conn, nil
}

// explainedTLS are the dial options for mTLS to custodyd with a client
// certificate refusal reported as UNAUTHENTICATED with its cause ("issued
// by X, custodyd trusts Y"), not as UNAVAILABLE: broken pipe.
func explainedTLS(cfg *tls.Config) []grpc.DialOption {
	cfg, diag := client.NewDiagnostics(cfg)
	return []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
			invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return diag.Explain(invoker(ctx, method, req, reply, cc, opts...))
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
			streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			return s, diag.Explain(err)
		}),
	}
}

func (a *app) close() {
	if a.conn != nil {
		_ = a.conn.Close()
		a.conn = nil
	}
}

func (a *app) keys() (custodyv1.KeyServiceClient, error) {
	conn, err := a.connect()
	if err != nil {
		return nil, err
	}
	return custodyv1.NewKeyServiceClient(conn), nil
}

func (a *app) crypto() (custodyv1.CryptoServiceClient, error) {
	conn, err := a.connect()
	if err != nil {
		return nil, err
	}
	return custodyv1.NewCryptoServiceClient(conn), nil
}

// callCtx bounds one RPC by --timeout. Local work (reading and encrypting a
// large file) is not bounded by it.
func (a *app) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.timeout)
}

// jsonMarshal is protojson with every field present (so valid:false and
// zero versions are visible), field names as in the .proto files.
var jsonMarshal = protojson.MarshalOptions{EmitUnpopulated: true, UseProtoNames: true}

// emit prints a response: as one line of JSON with --output json, otherwise
// through text.
func (a *app) emit(m proto.Message, text func(w io.Writer)) error {
	if a.output == "json" {
		b, err := jsonMarshal.Marshal(m)
		if err != nil {
			return localError(codes.Internal, fmt.Errorf("encode json: %w", err))
		}
		return a.writeJSONLine(b)
	}
	text(a.stdout)
	return nil
}

// emitValue prints a non-proto result (a Go value) as JSON or text.
func (a *app) emitValue(v any, text func(w io.Writer)) error {
	if a.output == "json" {
		b, err := json.Marshal(v)
		if err != nil {
			return localError(codes.Internal, fmt.Errorf("encode json: %w", err))
		}
		return a.writeJSONLine(b)
	}
	text(a.stdout)
	return nil
}

func (a *app) writeJSONLine(b []byte) error {
	// protojson varies its whitespace on purpose; compact it to one stable line.
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return localError(codes.Internal, fmt.Errorf("encode json: %w", err))
	}
	buf.WriteByte('\n')
	_, err := a.stdout.Write(buf.Bytes())
	return err
}
