package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/pki"
)

func TestEchoServesOverMutualTLSOnlyAndEchoes(t *testing.T) {
	p, err := pki.GenerateDev(t.TempDir(), []string{"relay"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--cert", p.ServerCertFile, "--key", p.ServerKeyFile, "--client-ca", p.CAFile}, pw, io.Discard)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no address printed: %v", err)
	}
	go io.Copy(io.Discard, pr)
	addr := strings.TrimSpace(strings.TrimPrefix(line, "custody-echo serving on "))
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit code %d after SIGTERM", code)
		}
	}()

	cfg, err := pki.ClientTLSConfig(p.CAFile, p.Clients["relay"].CertFile, p.Clients["relay"].KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	call := func(cfg *tls.Config) (*custodyv1.BatchDecryptResponse, error) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer ccancel()
		c := custodyv1.NewCryptoServiceClient(conn)
		d, err := c.Decrypt(cctx, &custodyv1.DecryptRequest{KeyName: "k", Ciphertext: []byte("abc")})
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(d.Plaintext, []byte("abc")) {
			t.Fatalf("Decrypt echoed %q", d.Plaintext)
		}
		return c.BatchDecrypt(cctx, &custodyv1.BatchDecryptRequest{Items: []*custodyv1.DecryptRequest{{Ciphertext: []byte("x")}, {Ciphertext: []byte("y")}}})
	}
	b, err := call(cfg)
	if err != nil || len(b.Results) != 2 || string(b.Results[1].GetResponse().GetPlaintext()) != "y" {
		t.Fatalf("BatchDecrypt = %v, %v", b, err)
	}
	noCert := cfg.Clone()
	noCert.Certificates = nil
	if _, err := call(noCert); err == nil {
		t.Fatal("a client without a certificate was served")
	}
}
