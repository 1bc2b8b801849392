package main

// Red team: an outsider — a certificate from another CA, none at all, or a
// certificate from the vault's CA that no identity in the config names —
// against a production vault in each phase of its life: awaiting its
// ceremony, sealed, and serving; over gRPC and the REST gateway; and under
// hostile load while sealed.

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/gateway"
)

// outsiderConn dials the vault's gRPC port with cert (nil: none), trusting
// the vault's server certificate.
func (v *redVault) outsiderConn(t *testing.T, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "localhost", RootCAs: caPool(t, v.pki.CAFile)}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(v.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// outsiderREST is an HTTPS client of the gateway with cert (nil: none).
func (v *redVault) outsiderREST(t *testing.T, cert *tls.Certificate) *http.Client {
	t.Helper()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: "localhost", RootCAs: caPool(t, v.pki.CAFile)}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// refusedAtHandshake reports whether err is a connection refused in the
// TLS handshake (no service answered it).
func refusedAtHandshake(err error) bool {
	if err == nil {
		return false
	}
	msg := strings.ToLower(err.Error())
	return status.Code(err) == codes.Unavailable && !strings.Contains(msg, "sealed") && !strings.Contains(msg, "unseal")
}

// TestAnOutsiderGetsNothingInAnyPhaseAndLeavesATrace: certificates from
// another CA, and none, are refused in the TLS handshake on gRPC and on the
// gateway in every phase (counted as handshake failures); a certificate of
// the vault's CA that names no configured identity is refused every call,
// on the record under its identity; a relay that forges the gateway's
// forwarded identity on the gRPC port is refused; while the vault awaits
// its ceremony or is sealed, relays get only "sealed", and a flood of
// refused calls neither stops the officers nor loses a record: every
// refused call, including the ones made before the audit log existed, is
// on the record once it does.
func TestAnOutsiderGetsNothingInAnyPhaseAndLeavesATrace(t *testing.T) {
	v := newRedVault(t, 1000)
	otherCert, err := tls.LoadX509KeyPair(v.other.Clients["relay"].CertFile, v.other.Clients["relay"].KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	strangerCert, err := tls.LoadX509KeyPair(v.pki.Clients["stranger"].CertFile, v.pki.Clients["stranger"].KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	stranger := v.identity["stranger"]
	handshakes := func(listener string) float64 {
		return metricValue(v.metrics(t), fmt.Sprintf(`custody_handshake_failures_total{listener=%q,reason="aborted"}`, listener))
	}
	// probe tries every outsider on both ports and checks each is refused in
	// the handshake and counted.
	probe := func(phase string) {
		t.Helper()
		g0, w0 := handshakes("grpc"), handshakes("gateway")
		for _, c := range []*tls.Certificate{&otherCert, nil} {
			_, err := custodyv1.NewCryptoServiceClient(v.outsiderConn(t, c)).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
			if !refusedAtHandshake(err) {
				t.Errorf("%s: gRPC with cert %v: %v, want a refused handshake", phase, c != nil, err)
			}
			_, err = custodyv1.NewSealServiceClient(v.outsiderConn(t, c)).GetSealStatus(tctx(t), &custodyv1.GetSealStatusRequest{})
			if !refusedAtHandshake(err) {
				t.Errorf("%s: seal status with cert %v: %v, want a refused handshake", phase, c != nil, err)
			}
			if resp, err := v.outsiderREST(t, c).Post("https://"+v.gwAddr+"/v1/crypto/encrypt", "application/json", strings.NewReader(`{"key_name":"msgs"}`)); err == nil {
				resp.Body.Close()
				t.Errorf("%s: REST with cert %v: HTTP %d, want a refused handshake", phase, c != nil, resp.StatusCode)
			}
		}
		waitFor(t, phase+": handshake failures counted", func() (bool, string) {
			g, w := handshakes("grpc"), handshakes("gateway")
			return g >= g0+4 && w >= w0+2, fmt.Sprintf("grpc +%v, gateway +%v", g-g0, w-w0)
		})
	}
	// strangerCalls tries the stranger on what each phase serves.
	strangerCalls := func(phase string, n int) {
		t.Helper()
		sc := custodyv1.NewSealServiceClient(v.outsiderConn(t, &strangerCert))
		for i := 0; i < n; i++ {
			_, err := sc.GetSealStatus(tctx(t), &custodyv1.GetSealStatusRequest{})
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("%s: the stranger's seal status %d: %v", phase, i, err)
			}
		}
		_, err := sc.GetShare(tctx(t), &custodyv1.GetShareRequest{})
		wantCode(t, err, codes.PermissionDenied, phase+": the stranger asks for a share")
		_, err = sc.Unseal(tctx(t), &custodyv1.UnsealRequest{})
		wantCode(t, err, codes.PermissionDenied, phase+": the stranger submits a share")
	}

	// Awaiting the ceremony: no audit log yet (no audit key): the refusals
	// are held until it opens. The stranger makes more of them than the
	// holding buffer.
	v.start(t)
	probe("awaiting ceremony")
	const early = 1100
	strangerCalls("awaiting ceremony", early)
	_, err = custodyv1.NewGovernanceServiceClient(v.outsiderConn(t, &strangerCert)).InitCeremony(tctx(t), &custodyv1.InitCeremonyRequest{})
	wantCode(t, err, codes.PermissionDenied, "the stranger runs the ceremony")
	_, err = custodyv1.NewCryptoServiceClient(v.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
	wantCode(t, err, codes.Unavailable, "a relay before the ceremony")
	v.ceremony(t)
	v.stop(t, syscall.SIGTERM)

	// Sealed: outsiders as before; relays and the gateway answer "sealed";
	// a relay floods refused unseal calls while the officers unseal.
	v.start(t)
	v.waitGateway(t)
	probe("sealed")
	strangerCalls("sealed", 5)
	if code, body, err := v.rest(t, restClient(t, v.pki.CAFile, v.pki, "relay"), "/v1/crypto/encrypt", map[string]any{"key_name": "msgs", "plaintext": "eA=="}); err != nil ||
		code != http.StatusServiceUnavailable || !strings.Contains(string(body), "sealed") {
		t.Fatalf("REST while sealed: %d %s %v", code, body, err)
	}
	relaySeal := custodyv1.NewSealServiceClient(v.conn(t, "relay"))
	const flood = 400
	var wg sync.WaitGroup
	var floodErrs sync.Map
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < flood/4; i++ {
				_, err := relaySeal.Unseal(tctx(t), &custodyv1.UnsealRequest{Nonce: []byte("junk"), SealedShare: []byte("junk")})
				floodErrs.Store(status.Code(err), true)
			}
		}()
	}
	for _, n := range []string{"alice", "bob"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			t.Fatalf("unseal %s during the flood: %+v", n, inv)
		}
	}
	wg.Wait()
	floodErrs.Range(func(k, _ any) bool {
		if k.(codes.Code) != codes.PermissionDenied {
			t.Errorf("the relay's flood got %v, want only PermissionDenied", k)
		}
		return true
	})

	// Serving: outsiders as before; the stranger and a forged gateway
	// identity are refused on the record.
	if inv := v.ctlAs(t, "auditor", nil, "audit", "pubkey", "--out", v.pubFile); inv.code != 0 {
		t.Fatalf("audit pubkey: %+v", inv)
	}
	v.anchor(t)
	probe("serving")
	_, err = custodyv1.NewCryptoServiceClient(v.outsiderConn(t, &strangerCert)).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
	wantCode(t, err, codes.PermissionDenied, "the stranger encrypts")
	if code, _, err := v.rest(t, v.outsiderREST(t, &strangerCert), "/v1/crypto/encrypt", map[string]any{"key_name": "msgs", "plaintext": "eA=="}); err != nil || code != http.StatusForbidden {
		t.Fatalf("the stranger over REST: %d %v", code, err)
	}
	forged := metadata.AppendToOutgoingContext(tctx(t), gateway.IdentityMetadataKey, v.identity["operator"])
	_, err = custodyv1.NewKeyServiceClient(v.conn(t, "relay")).ListKeys(forged, &custodyv1.ListKeysRequest{})
	wantCode(t, err, codes.Unauthenticated, "a relay forging the gateway's identity on the gRPC port")

	// The evidence: the log verifies; every refusal of the stranger's, in
	// every phase, is on the record under its identity, and the relay's
	// flood too.
	v.evidence(t)
	recs := auditRecords(t, filepath.Join(v.data, "audit"))
	byStranger, byRelayFlood, forgedSeen := 0, 0, false
	for _, r := range recs {
		switch {
		case r["identity"] == stranger && r["outcome"] == "denied":
			n := 1 // or the count of a summary of calls made beyond what is held before the log opens
			if d, _ := r["detail"].(string); strings.Contains(d, " more such calls before the audit log opened") {
				if _, err := fmt.Sscanf(d, "%d ", &n); err != nil {
					t.Fatalf("summary record %q", d)
				}
			}
			byStranger += n
		case r["identity"] == v.identity["relay"] && r["method"] == "Unseal" && r["outcome"] == "denied":
			byRelayFlood++
		case r["code"] == "Unauthenticated" && strings.Contains(fmt.Sprint(r["detail"]), "forwarded identity"):
			forgedSeen = true
		}
	}
	// Awaiting: early seal statuses + share + submit + ceremony; sealed: 5
	// + share + submit; serving: encrypt over gRPC and REST.
	if want := early + 3 + 5 + 2 + 2; byStranger != want {
		t.Errorf("%d refusals of the stranger on the record, want %d", byStranger, want)
	}
	if byRelayFlood != flood || !forgedSeen {
		t.Errorf("on the record: %d of the relay's %d refused submissions; forged identity refusal recorded: %v", byRelayFlood, flood, forgedSeen)
	}
}
