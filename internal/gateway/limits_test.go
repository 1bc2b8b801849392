package gateway_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/pki"
	"github.com/custodyhq/custody/internal/testenv"
)

// startLimited runs custodyd with the gateway and small HTTP limits.
func startLimited(t *testing.T) *testenv.Env {
	t.Helper()
	return testenv.Start(t, testenv.Settings{Gateway: true, Mutate: func(_ *testenv.Env, c *config.Config) {
		c.Limits.Gateway.MaxBodyBytes = 4096
		c.Limits.MaxHeaderBytes = 4096
		c.Limits.Gateway.ReadHeaderTimeout = 2 * time.Second
		c.Limits.Gateway.ReadTimeout = 3 * time.Second
		c.Limits.HandshakeTimeout = 4 * time.Second
	}})
}

// encryptBody is a valid encrypt request padded with JSON whitespace to
// exactly n bytes.
func encryptBody(t *testing.T, n int) string {
	t.Helper()
	b := `{"key_name": "demo", "plaintext": "aGVsbG8="}`
	if len(b) > n {
		t.Fatalf("body cannot be %d bytes", n)
	}
	return b + strings.Repeat(" ", n-len(b))
}

// served checks that a well-behaved client is served now.
func served(t *testing.T, c *http.Client, e *testenv.Env) {
	t.Helper()
	mustOK(t, post(t, c, e, "/v1/crypto/encrypt", encryptBody(t, 100)), "encrypt by a well-behaved client")
}

func TestGatewayRefusesOversizedBodiesWith413AtTheConfiguredLimit(t *testing.T) {
	e := startLimited(t)
	c := e.HTTPClient(t, "relay")
	// At the limit: served.
	mustOK(t, post(t, c, e, "/v1/crypto/encrypt", encryptBody(t, 4096)), "a 4096-byte body with max_body_bytes 4096")
	// One byte over, declared: refused before it is read.
	big := post(t, c, e, "/v1/crypto/encrypt", encryptBody(t, 4097))
	if big.code != http.StatusRequestEntityTooLarge || big.grpcCode(t) != 8 || !strings.Contains(big.raw, "4096") {
		t.Fatalf("4097-byte body: HTTP %d %s", big.code, big.raw)
	}
	// Over, with no length declared (streamed): refused once the limit is
	// crossed.
	req, err := http.NewRequest(http.MethodPost, "https://"+e.GatewayAddr+"/v1/crypto/encrypt",
		io.MultiReader(strings.NewReader(encryptBody(t, 100)), strings.NewReader(strings.Repeat(" ", 1<<20))))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("1 MiB streamed body: HTTP %d %s", resp.StatusCode, raw)
	}
	served(t, c, e)
}

func TestGatewayRefusesOversizedHeadersWith431(t *testing.T) {
	e := startLimited(t)
	c := e.HTTPClient(t, "relay")
	// HTTP/1.1, so the server (not the client's own check of the peer's
	// advertised limit) is what refuses.
	h1 := c.Transport.(*http.Transport).Clone()
	h1.ForceAttemptHTTP2 = false
	h1.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	h1.TLSClientConfig.NextProtos = []string{"http/1.1"}
	h1c := &http.Client{Transport: h1, Timeout: time.Minute}
	defer h1.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, "https://"+e.GatewayAddr+"/v1/crypto/encrypt", strings.NewReader(encryptBody(t, 100)))
	if err != nil {
		t.Fatal(err)
	}
	// max_header_bytes 4096, plus net/http's 4 KiB of slack for HTTP/1.
	req.Header.Set("X-Padding", strings.Repeat("a", 16<<10))
	resp, err := h1c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("16 KiB header: HTTP %d", resp.StatusCode)
	}
	served(t, c, e)
	// Over HTTP/2 the limit is advertised (SETTINGS_MAX_HEADER_LIST_SIZE),
	// so a conforming client refuses to send such a request at all.
	req2, _ := http.NewRequest(http.MethodPost, "https://"+e.GatewayAddr+"/v1/crypto/encrypt", strings.NewReader(encryptBody(t, 100)))
	req2.Header.Set("X-Padding", strings.Repeat("a", 16<<10))
	if resp, err := c.Do(req2); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("16 KiB header over HTTP/2: HTTP %d", resp.StatusCode)
		}
	}
}

// TestGatewaySlowlorisIsCutOffWhileOthersAreServed holds 40 connections
// that trickle request headers, 10 that trickle a body and 10 that never
// finish TLS. Each is closed by its deadline (headers: read_header_timeout
// 2s; body: read_timeout 3s; TLS: the shortest of net/http's deadlines and
// handshake_timeout, 2s here) while a
// well-behaved client is served, and the metrics count them.
func TestGatewaySlowlorisIsCutOffWhileOthersAreServed(t *testing.T) {
	e := startLimited(t)
	c := e.HTTPClient(t, "relay")
	served(t, c, e)
	cert := e.Cert["relay"]
	tlsCfg, err := pki.ClientTLSConfig(e.CAFile, cert.CertFile, cert.KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg.NextProtos = []string{"http/1.1"}

	type slow struct {
		kind   string
		limit  time.Duration
		closed time.Duration
	}
	var mu sync.Mutex
	var results []slow
	var wg sync.WaitGroup
	// Each slow connection is opened and primed here, one at a time, then
	// trickles a byte every 200ms (for at most 15s) until the server closes
	// it.
	attack := func(kind string, limit time.Duration, open func() (net.Conn, error), prefix string, trickle byte) {
		conn, err := open()
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		start := time.Now()
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, prefix); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			buf := make([]byte, 512)
			for time.Since(start) < 15*time.Second {
				conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				_, err := conn.Read(buf)
				var ne net.Error
				if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
					break
				}
				conn.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := conn.Write([]byte{trickle}); err != nil {
					break
				}
			}
			mu.Lock()
			results = append(results, slow{kind, limit, time.Since(start)})
			mu.Unlock()
		}()
	}
	dialTLS := func() (net.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.GatewayAddr, tlsCfg)
	}
	dialTCP := func() (net.Conn, error) { return net.DialTimeout("tcp", e.GatewayAddr, 5*time.Second) }
	for range 40 {
		attack("trickled headers", 2*time.Second, dialTLS, "POST /v1/crypto/encrypt HTTP/1.1\r\nHost: localhost\r\nX-Slow: ", 'a')
	}
	for range 10 {
		attack("trickled body", 3*time.Second, dialTLS,
			"POST /v1/crypto/encrypt HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", ' ')
	}
	for range 10 {
		// A ClientHello record that announces 200 bytes, then a trickle.
		// net/http gives a TLS handshake the shortest of its read
		// deadlines (read_header_timeout here), before handshake_timeout.
		attack("unfinished TLS handshake", 2*time.Second, dialTCP, "\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03", 0x42)
	}
	// Meanwhile a well-behaved client is served, repeatedly.
	for range 5 {
		served(t, c, e)
		time.Sleep(200 * time.Millisecond)
	}
	wg.Wait()
	for _, r := range results {
		// A little early is the deadline counted from accept rather than
		// from our first byte; late by up to 5s is a busy machine.
		if r.closed < r.limit-300*time.Millisecond || r.closed > r.limit+5*time.Second {
			t.Errorf("%s: closed after %s, limit %s", r.kind, r.closed, r.limit)
		}
	}
	if len(results) != 60 {
		t.Fatalf("%d of 60 slow connections finished", len(results))
	}
	// The unfinished ones are counted as handshake failures of the gateway.
	resp, err := http.Get("http://" + e.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	failures := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "custody_handshake_failures_total{") && strings.Contains(l, `listener="gateway"`) {
			f, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
			failures += f
		}
	}
	if failures < 50 {
		t.Fatalf("custody_handshake_failures_total{listener=gateway} = %v, want the 50 connections that never sent a whole request", failures)
	}
	served(t, c, e)
}

// TestGatewayBoundsBatchesAsGRPCDoes: keys.max_batch applies to a batch
// sent through the gateway exactly as to one sent over gRPC.
func TestGatewayBoundsBatchesAsGRPCDoes(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{Gateway: true, Mutate: func(_ *testenv.Env, c *config.Config) { c.Keys.MaxBatch = 5 }})
	c := e.HTTPClient(t, "relay")
	items := func(n int) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = map[string]any{"key_name": "demo", "plaintext": "aGVsbG8="}
		}
		return out
	}
	mustOK(t, post(t, c, e, "/v1/crypto/batch-encrypt", map[string]any{"items": items(5)}), "a batch of max_batch items")
	over := post(t, c, e, "/v1/crypto/batch-encrypt", map[string]any{"items": items(6)})
	if over.code != http.StatusBadRequest || over.grpcCode(t) != 3 || !strings.Contains(over.raw, "limit is 5") {
		t.Fatalf("REST batch over max_batch: HTTP %d %s", over.code, over.raw)
	}
	req := &custodyv1.BatchEncryptRequest{}
	for range 6 {
		req.Items = append(req.Items, &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("hello")})
	}
	if _, err := e.Crypto(t, "relay").BatchEncrypt(context.Background(), req); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("gRPC batch over max_batch: %v", err)
	}
}
