package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/pki"
)

type devProc struct {
	cmd    *exec.Cmd
	addr   string
	stderr *bytes.Buffer
}

func buildBinary(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "custodyd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func startDev(t *testing.T, bin, dir string) *devProc {
	t.Helper()
	cmd := exec.Command(bin, "--dev", "--dev-dir", dir, "--dev-listen", "127.0.0.1:0", "--dev-http", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF=")
	stdout, _ := cmd.StdoutPipe()
	p := &devProc{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		re := regexp.MustCompile(`gRPC \(mTLS\): (\S+)`)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
	}()
	select {
	case p.addr = <-found:
	case <-time.After(60 * time.Second):
		t.Fatalf("custodyd did not start: %s", p.stderr.String())
	}
	return p
}

func dialRole(t *testing.T, dir, addr, role string) *grpc.ClientConn {
	tlsCfg, err := pki.ClientTLSConfig(filepath.Join(dir, "pki", "ca.pem"), filepath.Join(dir, "pki", role+".pem"), filepath.Join(dir, "pki", role+"-key.pem"), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestSIGKILLUnderLoadLosesNoAcknowledgedRecord kills custodyd with SIGKILL
// while 16 clients decrypt, restarts it on the same directory, and checks
// that the audit chain verifies and that every decrypt a client saw succeed
// is in the log (each request carries a unique context, so its record is
// recognisable by the context digest).
func TestSIGKILLUnderLoadLosesNoAcknowledgedRecord(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	p := startDev(t, bin, dir)
	c := custodyv1.NewCryptoServiceClient(dialRole(t, dir, p.addr, "relay"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ct, err := c.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%d-%d", w, i)
				// Even requests succeed (Encrypt under a unique context); odd ones
				// are refused (Decrypt under the wrong context) but audited with
				// their context digest all the same. Both must be on the record.
				var err error
				if i%2 == 0 {
					_, err = c.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("p"), Context: map[string]string{"req": id}})
				} else {
					_, err = c.Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: "demo", Ciphertext: ct.Ciphertext, Context: map[string]string{"req": id}})
				}
				if err != nil && !isAnswer(err) {
					return // connection lost: the process is gone
				}
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(700 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	close(stop)
	wg.Wait()
	if len(acked) < 50 {
		t.Fatalf("only %d requests answered before the kill", len(acked))
	}

	// Restart on the same directory: the torn tail, if any, is cut, and the
	// chain continues.
	p2 := startDev(t, bin, dir)
	ac := custodyv1.NewAuditServiceClient(dialRole(t, dir, p2.addr, "auditor"))
	pk, err := ac.GetAuditPublicKey(ctx, &custodyv1.GetAuditPublicKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(pk.Der)
	if err != nil {
		t.Fatal(err)
	}
	// Context digests are keyed by the vault: the auditor asks it for the
	// digest of each acknowledged request's context.
	want := map[string][]byte{}
	for _, id := range acked {
		d, err := ac.DigestContext(ctx, &custodyv1.DigestContextRequest{Context: map[string]string{"req": id}})
		if err != nil {
			t.Fatal(err)
		}
		want[id] = d.GetDigest()
	}
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p2.cmd.Wait(); err != nil {
		t.Fatalf("second run: %v\n%s", err, p2.stderr)
	}
	auditDir := filepath.Join(dir, "audit")
	rep, err := audit.Verify(auditDir, pub, nil)
	if err != nil {
		t.Fatalf("chain after SIGKILL: %v", err)
	}
	seen := map[string]bool{}
	segs, _ := filepath.Glob(filepath.Join(auditDir, "audit-*.log"))
	for _, s := range segs {
		b, _ := os.ReadFile(s)
		for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
			var r audit.Record
			if json.Unmarshal(line, &r) == nil && (r.Method == "Decrypt" || r.Method == "Encrypt") {
				seen[string(r.ContextDigest)] = true
			}
		}
	}
	missing := 0
	for _, id := range acked {
		if !seen[string(want[id])] {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged requests are missing from the audit log", missing, len(acked))
	}
	t.Logf("SIGKILL after %d acknowledged decrypts: all in the log; chain verifies (%d records, %d torn tails)", len(acked), rep.Records, len(rep.TornTails))
}

// isAnswer reports whether err is the server's answer (a status it chose)
// rather than a lost connection.
func isAnswer(err error) bool {
	s := fmt.Sprint(err)
	return !regexp.MustCompile(`Unavailable|connection|EOF|transport|Canceled|DeadlineExceeded`).MatchString(s)
}
