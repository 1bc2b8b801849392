package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout           = 30 * time.Second
	DefaultMaxAttempts       = 4
	DefaultInitialBackoff    = 100 * time.Millisecond
	DefaultMaxBackoff        = 2 * time.Second
	DefaultCacheSize         = 1024
	DefaultCacheTTL          = 5 * time.Minute
	DefaultConversationLimit = 1 << 20
)

// nonIdempotent lists the methods that are never retried: a repeat after a
// lost response would change state a second time.
var nonIdempotent = map[string]bool{
	// A second rotation would add another version (harmless, but not what
	// the caller asked for).
	custodyv1.KeyService_RotateKey_FullMethodName: true,
}

// Config says how to reach custodyd. Addr, CAFile, CertFile and KeyFile are
// required: the client never talks to custodyd without mutual TLS 1.3.
type Config struct {
	// Addr is custodyd's gRPC address, host:port; a host name with several
	// addresses reaches them all. A comma-separated list names several
	// replicas (see Addrs).
	Addr string
	// Addrs are more replicas' addresses (host:port), used with Addr.
	// Calls are balanced over every healthy replica and a call that fails
	// with UNAVAILABLE is retried on another (see BalancedTarget).
	Addrs []string
	// CAFile is a PEM file of the CA certificates that issued custodyd's
	// certificate. The system roots are never used.
	CAFile string
	// CertFile and KeyFile are the PEM client certificate and its private
	// key; the certificate is this relay's identity.
	CertFile, KeyFile string
	// ServerName is the name to verify in custodyd's certificate; empty
	// means the host part of Addr.
	ServerName string
	// Timeout bounds each call, retries and backoff included, when the
	// caller's context has no earlier deadline. 0 means DefaultTimeout;
	// negative means no bound beyond the caller's context.
	Timeout time.Duration

	// MaxAttempts caps attempts per call (first try included) on
	// UNAVAILABLE; 0 means DefaultMaxAttempts, 1 disables retries.
	MaxAttempts int
	// InitialBackoff and MaxBackoff shape the jittered exponential backoff
	// between attempts; 0 means the defaults.
	InitialBackoff, MaxBackoff time.Duration

	// CacheSize caps how many unwrapped data keys are kept; 0 means
	// DefaultCacheSize, negative disables the cache.
	CacheSize int
	// CacheTTL is how long an unwrapped data key is kept; 0 means
	// DefaultCacheTTL.
	CacheTTL time.Duration
	// ConversationLimit caps the messages one conversation Sealer seals
	// with its data key; 0 means DefaultConversationLimit.
	ConversationLimit uint64
	// Block makes Dial wait, until ctx is done, for the connection to be
	// ready, so that a wrong address or certificate fails at Dial.
	Block bool

	// CoalesceDecrypts makes Client.Decrypt send calls made concurrently
	// on this Client together, as BatchDecrypt requests, which custodyd
	// serves several times faster per item than single calls (one round
	// trip, one audit flush). A call made when the connection is not busy
	// is sent at once, as before; under load a call waits at most
	// CoalesceLinger for others to join it. Each item is still
	// authorised, budgeted and audited on its own (its audit record names
	// BatchDecrypt[i]), and each caller gets its own result or error, as a
	// Decrypt would have returned it, except that a refused budget carries
	// no retry hint. Calls whose context carries outgoing gRPC metadata
	// are always sent alone. Off by default.
	CoalesceDecrypts bool
	// CoalesceLinger is the longest a coalesced Decrypt waits for others
	// before its batch is sent; 0 means DefaultCoalesceLinger (500 µs).
	CoalesceLinger time.Duration
	// CoalesceMaxBatch caps the calls in one BatchDecrypt; 0 means
	// DefaultCoalesceMaxBatch (100). It must not exceed custodyd's
	// limits.max_batch, or every call of a full batch fails.
	CoalesceMaxBatch int
}

func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = DefaultInitialBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MaxBackoff < c.InitialBackoff {
		c.MaxBackoff = c.InitialBackoff
	}
	if c.CacheSize == 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.CacheTTL <= 0 {
		c.CacheTTL = DefaultCacheTTL
	}
	if c.ConversationLimit == 0 {
		c.ConversationLimit = DefaultConversationLimit
	}
	if c.CoalesceLinger <= 0 {
		c.CoalesceLinger = DefaultCoalesceLinger
	}
	if c.CoalesceMaxBatch <= 0 {
		c.CoalesceMaxBatch = DefaultCoalesceMaxBatch
	}
	return c
}

// tlsConfig loads the mTLS files. Errors name files, never key bytes.
func (c Config) tlsConfig() (*tls.Config, error) {
	var missing []string
	for _, f := range []struct{ val, name string }{
		{strings.Join(Endpoints(append([]string{c.Addr}, c.Addrs...)...), ","), "Addr"}, {c.CAFile, "CAFile"}, {c.CertFile, "CertFile"}, {c.KeyFile, "KeyFile"},
	} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: missing %s (mutual TLS is required)", ErrConfig, strings.Join(missing, ", "))
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: read CA file: %w", ErrConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate", ErrConfig, c.CAFile)
	}
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: load client certificate %s and key %s: %w", ErrConfig, c.CertFile, c.KeyFile, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		RootCAs:      pool,
		Certificates: []tls.Certificate{pair},
		ServerName:   c.ServerName,
	}, nil
}

// Client is a connection to custodyd for a relay: envelope encryption with
// data keys, a cache of unwrapped data keys, and the raw gRPC services. It
// is safe for concurrent use. Close it to zero every cached key.
type Client struct {
	cfg      Config
	conn     *grpc.ClientConn
	crypto   custodyv1.CryptoServiceClient
	keys     custodyv1.KeyServiceClient
	dataKeys custodyv1.DataKeyServiceClient
	cache    *keyCache
	coalesce *coalescer // nil unless Config.CoalesceDecrypts

	closeOnce sync.Once
	closeErr  error
}

// Dial opens a connection to custodyd with mutual TLS 1.3 from the files
// in cfg. The connection is made lazily (on the first call) unless
// cfg.Block is set; ctx bounds only that wait, and a Dial that gives up
// says why the connection failed (for example "connection refused", or a
// client certificate custodyd did not accept).
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	tc, diag := NewDiagnostics(tc) // tells a refused certificate from an outage
	p := retryPolicy{
		timeout:     cfg.Timeout,
		maxAttempts: cfg.MaxAttempts,
		initial:     cfg.InitialBackoff,
		max:         cfg.MaxBackoff,
		diag:        diag,
	}
	target, dialOpts, err := BalancedTarget(Endpoints(append([]string{cfg.Addr}, cfg.Addrs...)...), cfg.ServerName)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, append(dialOpts,
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithChainUnaryInterceptor(p.unary),
	)...)
	if err != nil {
		return nil, fmt.Errorf("%w: address %q: %w", ErrConfig, cfg.Addr, err)
	}
	if cfg.Block {
		if err := diag.WaitReady(ctx, conn); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	c := &Client{
		cfg:      cfg,
		conn:     conn,
		crypto:   custodyv1.NewCryptoServiceClient(conn),
		keys:     custodyv1.NewKeyServiceClient(conn),
		dataKeys: custodyv1.NewDataKeyServiceClient(conn),
		cache:    newKeyCache(cfg.CacheSize, cfg.CacheTTL, time.Now),
	}
	if cfg.CoalesceDecrypts {
		c.coalesce = newCoalescer(c.crypto, cfg.CoalesceLinger, cfg.CoalesceMaxBatch)
	}
	return c, nil
}

// Close closes the connection and zeroes every cached data key. Sealers
// made by SealerFor hold their own keys: close them too.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.cache.close()
		c.closeErr = c.conn.Close()
	})
	return c.closeErr
}

// Conn returns the underlying connection, for services this package does
// not wrap. Calls made on it get the same retry and deadline policy.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Crypto returns the raw CryptoService client (with the retry policy).
func (c *Client) Crypto() custodyv1.CryptoServiceClient { return c.crypto }

// Keys returns the raw KeyService client (with the retry policy).
func (c *Client) Keys() custodyv1.KeyServiceClient { return c.keys }

// DataKeys returns the raw DataKeyService client (with the retry policy):
// data keys custodyd keeps for a stateless relay under an id (StoreDataKey,
// FetchDataKey, ListDataKeyIds, DeleteDataKey; docs/relay.md). A fetch
// returns the plaintext data key only under a grant with allow_plaintext;
// otherwise pass recipient_public_key (RelayPublicKeyDER) and open the
// answer with DecryptTransported.
func (c *Client) DataKeys() custodyv1.DataKeyServiceClient { return c.dataKeys }

// retryPolicy is the unary interceptor that bounds each call by a deadline
// and retries UNAVAILABLE with jittered exponential backoff.
//
// Retrying is safe because every Custody RPC is idempotent in effect except
// those in nonIdempotent: crypto calls change no server state (a repeated
// Encrypt or GenerateDataKey yields a fresh ciphertext or key and the first,
// never returned, is simply lost), lifecycle calls set a state that a repeat
// sets again, and CreateKey repeated after a lost response fails with
// ALREADY_EXISTS rather than making a second key. A repeated call is audited
// and counted against budgets again, as it should be.
type retryPolicy struct {
	timeout     time.Duration
	maxAttempts int
	initial     time.Duration
	max         time.Duration
	diag        *Diagnostics // reports a refused client certificate as such
}

func (p retryPolicy) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if p.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.timeout) // an earlier caller deadline wins
		defer cancel()
	}
	attempts := p.maxAttempts
	if nonIdempotent[method] || retriesDisabled(ctx) {
		attempts = 1
	}
	for attempt := 1; ; attempt++ {
		var header, trailer metadata.MD
		// A full slice expression: never append into the caller's array.
		callOpts := append(opts[:len(opts):len(opts)], grpc.Header(&header), grpc.Trailer(&trailer))
		err := invoker(ctx, method, req, reply, cc, callOpts...)
		if err == nil {
			return nil
		}
		// A refused client certificate comes back UNAUTHENTICATED, with
		// its cause, and is never retried: the next attempt would be
		// refused the same way.
		err = p.diag.Explain(err)
		if st, ok := status.FromError(err); ok && st.Code() == codes.ResourceExhausted {
			return budgetError(st, header, trailer)
		}
		if !isRetryable(err) || attempt >= attempts || ctx.Err() != nil {
			return err
		}
		delay := p.backoff(attempt)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= delay {
			// The next attempt could not finish in time: report the real
			// failure rather than a deadline we chose to run into.
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// backoff returns the wait before attempt+1: exponential from initial,
// capped at max, with "equal jitter" (half fixed, half random) so that
// relays that failed together do not retry together.
func (p retryPolicy) backoff(attempt int) time.Duration {
	d := p.initial
	for i := 1; i < attempt && d < p.max; i++ {
		d *= 2
	}
	if d > p.max {
		d = p.max
	}
	half := d / 2
	return half + rand.N(half+1)
}
