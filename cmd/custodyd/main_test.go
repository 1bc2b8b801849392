package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

func TestBadInvocationsFailWithOneClearLine(t *testing.T) {
	dir := t.TempDir()
	world := filepath.Join(dir, "pin")
	os.WriteFile(world, []byte("1234\n"), 0o644)
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("listen: 127.0.0.1:1\nhsm:\n  uri: \"pkcs11:token=x?module-path=/nonexistent.so\"\n  pin_file: "+world+"\n  pinn: x\n"), 0o600)
	cases := []struct {
		args []string
		code int
		says string
	}{
		{nil, 2, "--config FILE is required"},
		{[]string{"--config", cfg, "--dev"}, 2, "either --config or --dev"},
		{[]string{"--config", filepath.Join(dir, "missing.yaml")}, 1, "missing.yaml"},
		{[]string{"--config", cfg}, 1, "pinn"},
		{[]string{"--pin", "1234"}, 2, "flag provided but not defined: -pin"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		if code := run(c.args, &out, &errb); code != c.code || !strings.Contains(errb.String(), c.says) {
			t.Errorf("custodyd %v: exit %d, stderr %q; want %d mentioning %q", c.args, code, errb.String(), c.code, c.says)
		}
		if strings.Contains(errb.String(), "1234") && c.args != nil && c.args[0] != "--pin" {
			t.Errorf("PIN in error output: %q", errb.String())
		}
	}
}

// TestSIGTERMLetsInFlightRequestsFinish runs the real binary in dev mode,
// keeps requests in flight and sends SIGTERM: every request that was
// accepted must complete successfully and the process must exit 0.
func TestSIGTERMLetsInFlightRequestsFinish(t *testing.T) {
	dir := t.TempDir()
	p := startDev(t, buildBinary(t), dir)
	cmd, stderr := p.cmd, p.stderr
	c := custodyv1.NewCryptoServiceClient(dialRole(t, dir, p.addr, "relay"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	// Many requests in flight at once, then SIGTERM while they run.
	var wg sync.WaitGroup
	var mu sync.Mutex
	okCount, failCount := 0, 0
	start := make(chan struct{})
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			items := make([]*custodyv1.EncryptRequest, 100)
			for j := range items {
				items[j] = &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("in flight")}
			}
			r, err := c.BatchEncrypt(ctx, &custodyv1.BatchEncryptRequest{Items: items}, grpc.WaitForReady(false))
			mu.Lock()
			defer mu.Unlock()
			if err == nil && len(r.Results) == 100 && r.Results[99].GetResponse() != nil {
				okCount++
			} else {
				failCount++
			}
		}()
	}
	close(start)
	time.Sleep(30 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("custodyd exit: %v\n%s", err, stderr.String())
	}
	if okCount == 0 {
		t.Fatalf("no in-flight request completed (failed %d)", failCount)
	}
	if !strings.Contains(stderr.String(), "finishing in-flight requests") {
		t.Fatalf("no graceful shutdown logged: %s", stderr.String())
	}
	t.Logf("SIGTERM with 64 batches in flight: %d completed, %d refused after the listener closed", okCount, failCount)
}

func TestVersionFlagPrintsTheBuildAndExits(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "custodyd ") ||
		!strings.Contains(out.String(), " commit ") || errb.Len() != 0 {
		t.Fatalf("--version: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}

// TestMakeBuildStampsTheCommitIntoBothBinaries: `make build` is how the
// binaries are built; their --version names the commit of the checkout
// (git's own stamp is missing in worktrees and with -buildvcs=false).
func TestMakeBuildStampsTheCommitIntoBothBinaries(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if out, err := exec.Command("make", "-C", root, "build", "BIN="+bin).CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	want := "commit unknown"
	if c, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty", "--abbrev=40").Output(); err == nil {
		want = "commit " + strings.TrimSpace(string(c))
	}
	for _, prog := range []string{"custodyd", "custodyctl"} {
		out, err := exec.Command(filepath.Join(bin, prog), "--version").Output()
		if err != nil || !strings.HasPrefix(string(out), prog+" ") || !strings.Contains(string(out), want) {
			t.Errorf("%s --version: %q (%v), want it to name %q", prog, out, err, want)
		}
	}
}

// TestDevVaultGivesTheRelayASigningAndAMACKey: `custodyd --dev` (what make
// run starts) grants its relay demo-sign and demo-mac, so the signing and
// MAC examples of docs/gateway.md work there.
func TestDevVaultGivesTheRelayASigningAndAMACKey(t *testing.T) {
	dir := t.TempDir()
	p := startDev(t, buildBinary(t), dir)
	c := custodyv1.NewCryptoServiceClient(dialRole(t, dir, p.addr, "relay"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	digest := sha256.Sum256([]byte("release.tar"))
	sig, err := c.Sign(ctx, &custodyv1.SignRequest{KeyName: "demo-sign", Input: &custodyv1.SignRequest_Digest{Digest: digest[:]}})
	if err != nil {
		t.Fatalf("sign with demo-sign: %v", err)
	}
	v, err := c.Verify(ctx, &custodyv1.VerifyRequest{KeyName: "demo-sign", Input: &custodyv1.VerifyRequest_Digest{Digest: digest[:]},
		Signature: sig.GetSignature()})
	if err != nil || !v.GetValid() {
		t.Fatalf("verify: %v %v", v, err)
	}
	if _, err := c.GetPublicKey(ctx, &custodyv1.GetPublicKeyRequest{KeyName: "demo-sign"}); err != nil {
		t.Fatalf("public key: %v", err)
	}
	mac, err := c.Mac(ctx, &custodyv1.MacRequest{KeyName: "demo-mac", Data: []byte("hello")})
	if err != nil || len(mac.GetMac()) != 32 {
		t.Fatalf("mac with demo-mac: %v %v", mac, err)
	}
	ok, err := c.VerifyMac(ctx, &custodyv1.VerifyMacRequest{KeyName: "demo-mac", Data: []byte("hello"), Mac: mac.GetMac()})
	if err != nil || !ok.GetValid() {
		t.Fatalf("verify-mac: %v %v", ok, err)
	}
	// The grants are exactly those: the relay cannot MAC with the signing key.
	if _, err := c.Mac(ctx, &custodyv1.MacRequest{KeyName: "demo-sign", Data: []byte("x")}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("mac with demo-sign: %v, want PERMISSION_DENIED", err)
	}
}
