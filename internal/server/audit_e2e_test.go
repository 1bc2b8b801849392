package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/testenv"
)

// TestAuditDirectoryGoneFailsClosedAndRecovers removes the audit directory
// under a running custodyd: crypto operations must fail with UNAVAILABLE (no
// unaudited success) and /readyz must say so; when the directory is back,
// requests succeed again without a restart and the whole log verifies.
func TestAuditDirectoryGoneFailsClosedAndRecovers(t *testing.T) {
	e := start(t)
	e.CreateKey(t, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	ct, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("before")})
	if err != nil {
		t.Fatal(err)
	}
	dir := e.Config.Audit.Dir
	away := dir + ".away"
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		_, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext})
		wantCode(t, err, codes.Unavailable, "decrypt with the audit log gone")
		_, err = c.BatchDecrypt(x, &custodyv1.BatchDecryptRequest{Items: []*custodyv1.DecryptRequest{{KeyName: "enc", Ciphertext: ct.Ciphertext}}})
		wantCode(t, err, codes.Unavailable, "batch decrypt with the audit log gone")
	}
	resp, err := http.Get("http://" + e.HTTPAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "audit") {
		t.Fatalf("readyz with the audit log gone: %d %q", resp.StatusCode, body)
	}
	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	if d, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext}); err != nil || string(d.Plaintext) != "before" {
		t.Fatalf("after the directory came back: %v", err)
	}
	resp, err = http.Get("http://" + e.HTTPAddr + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("readyz after recovery: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	// Every success is on the record, and the log (old and new segments) verifies.
	pub := e.D.AuditPK
	e.Stop(t)
	rep, err := audit.Verify(dir, pub, nil)
	if err != nil {
		t.Fatalf("verify after recovery: %v", err)
	}
	t.Logf("verified %d records", rep.Records)
}

// TestAuditRecordsNeverHoldSecrets plants recognisable plaintext, context
// values and data keys in requests (allowed, denied and failed) and greps
// every audit file for them, and for the HSM PIN.
func TestAuditRecordsNeverHoldSecrets(t *testing.T) {
	e := start(t)
	e.CreateKey(t, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	plain := []byte("PLAINTEXT-SECRET-7f3a9c")
	ctxVal := "CTX-SECRET-c41d22"
	encCtx := map[string]string{"tenant": ctxVal}
	ct, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: plain, Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext, Context: encCtx}); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext, Context: map[string]string{"tenant": ctxVal + "-wrong"}})
	_, _ = c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "secret", Plaintext: plain, Context: encCtx})
	_, _ = e.Crypto(t, "stranger").Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: plain, Context: encCtx})
	dk, err := c.GenerateDataKey(x, &custodyv1.GenerateDataKeyRequest{KeyName: "enc", Context: encCtx})
	if err != nil {
		t.Fatal(err)
	}
	pin, err := os.ReadFile(filepath.Join(e.Dir, "pin"))
	if err != nil {
		t.Fatal(err)
	}
	e.Stop(t)
	secrets := map[string][]byte{
		"plaintext":              plain,
		"context value":          []byte(ctxVal),
		"data key (raw)":         dk.Plaintext,
		"data key (hex)":         []byte(hex.EncodeToString(dk.Plaintext)),
		"data key (base64)":      []byte(base64.StdEncoding.EncodeToString(dk.Plaintext)),
		"hsm pin":                bytes.TrimSpace(pin),
		"plaintext (base64)":     []byte(base64.StdEncoding.EncodeToString(plain)),
		"context value (base64)": []byte(base64.StdEncoding.EncodeToString([]byte(ctxVal))),
	}
	var files int
	err = filepath.WalkDir(e.Config.Audit.Dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		for what, s := range secrets {
			if bytes.Contains(b, s) {
				t.Errorf("%s found in %s", what, p)
			}
		}
		return nil
	})
	if err != nil || files == 0 {
		t.Fatalf("walked %d files: %v", files, err)
	}
	// The requests are on the record all the same: allowed, denied and failed.
	var ok, denied, failed int
	rep := map[string]int{}
	if err := readRecords(e.Config.Audit.Dir, func(r audit.Record) {
		rep[r.Method]++
		switch r.Outcome {
		case audit.OutcomeOK:
			ok++
		case audit.OutcomeDenied:
			denied++
		case audit.OutcomeError:
			failed++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if ok < 4 || denied < 2 || failed < 1 {
		t.Fatalf("records ok=%d denied=%d failed=%d (%v)", ok, denied, failed, rep)
	}
}

// BenchmarkDecryptDurableAudit measures Decrypt over gRPC+mTLS at
// concurrency 8 with the audit log's group commit on and off.
func BenchmarkDecryptDurableAudit(b *testing.B) {
	for _, mode := range []struct {
		name string
		off  bool
	}{{"group-commit", false}, {"fsync-per-record", true}} {
		b.Run(mode.name, func(b *testing.B) {
			s := testenv.Settings{Mutate: testenv.Grant("relay", []string{"enc"}, allOps, true)}
			s.Daemon.AuditNoGroupCommit = mode.off
			e := testenv.Start(b, s)
			e.CreateKey(b, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
			c := e.Crypto(b, "relay")
			x := context.Background()
			ct, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: make([]byte, 32)})
			if err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(4) // 4 × GOMAXPROCS(2) = 8 concurrent callers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			st := e.D.Audit.Stats()
			b.ReportMetric(float64(st.Records)/float64(max(st.Fsyncs, 1)), "records/fsync")
		})
	}
}

// readRecords decodes every record of every segment in an audit directory.
func readRecords(dir string, fn func(audit.Record)) error {
	// audit.ReadDir stops at the live segment's preallocated zero tail.
	return audit.ReadDir(context.Background(), dir, audit.Filter{}, func(r audit.Record) error { fn(r); return nil })
}

// TestAuditDiskFullFailsClosedAndRecovers puts the audit log on a tiny
// tmpfs, fills it, and expects crypto operations to fail with UNAVAILABLE
// (no unaudited success) until space is freed, then to succeed again without
// a restart, with a log that verifies. It needs root to mount the tmpfs
// (CI runs as root).
func TestAuditDiskFullFailsClosedAndRecovers(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run this test as root (it mounts a 512 KiB tmpfs for the audit log)")
		}
		t.Skip("needs root to mount a 512 KiB tmpfs for the audit log")
	}
	mnt := filepath.Join(t.TempDir(), "audit-fs")
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() }) // after custodyd stops (cleanups run last-in first-out)
	e := testenv.Start(t, testenv.Settings{Mutate: func(_ *testenv.Env, c *config.Config) {
		c.Audit.Dir = mnt
		c.Grants = append(c.Grants, config.GrantConfig{Identity: "dev-relay", Keys: []string{"enc"}, Operations: allOps, AllowPlaintext: true})
	}})
	e.CreateKey(t, "enc", custodyv1.KeyPurpose_ENCRYPT_AES256_GCM)
	c := e.Crypto(t, "relay")
	x := ctx(t)
	ct, err := c.Encrypt(x, &custodyv1.EncryptRequest{KeyName: "enc", Plaintext: []byte("before")})
	if err != nil {
		t.Fatal(err)
	}
	// Fill the file system.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write(make([]byte, 1<<20)) // stops at ENOSPC
	f.Close()
	// With the disk full, a request succeeds only if its record still fits
	// (a failed batch is cut back, which frees a few bytes); every other
	// one fails closed. Successes are counted and checked against the log.
	failed, succeeded := 0, 0
	for i := 0; i < 20; i++ {
		_, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext})
		if err == nil {
			succeeded++
			continue
		}
		wantCode(t, err, codes.Unavailable, "decrypt with the audit disk full")
		failed++
	}
	if failed == 0 {
		t.Fatal("no decrypt failed with the audit disk full")
	}
	// Right after a failure, /readyz says the audit log is down.
	for i := 0; ; i++ {
		_, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext})
		if err != nil {
			wantCode(t, err, codes.Unavailable, "decrypt with the audit disk full")
			failed++
			break
		}
		if succeeded++; i > 5 {
			t.Fatal("decrypts keep succeeding with the audit disk full")
		}
	}
	resp, err := http.Get("http://" + e.HTTPAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz with the audit disk full: %d", resp.StatusCode)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if d, err := c.Decrypt(x, &custodyv1.DecryptRequest{KeyName: "enc", Ciphertext: ct.Ciphertext}); err != nil || string(d.Plaintext) != "before" {
		t.Fatalf("after freeing space: %v", err)
	}
	pub := e.D.AuditPK
	e.Stop(t)
	if _, err := audit.Verify(mnt, pub, nil); err != nil {
		t.Fatalf("verify after disk full: %v", err)
	}
	okDecrypts := 0
	if err := readRecords(mnt, func(r audit.Record) {
		if r.Method == "Decrypt" && r.Outcome == audit.OutcomeOK {
			okDecrypts++
		}
	}); err != nil {
		t.Fatal(err)
	}
	if okDecrypts != succeeded+1 {
		t.Fatalf("%d successful decrypts (%d while full + 1 after), %d on the record", succeeded+1, succeeded, okDecrypts)
	}
	t.Logf("disk full: %d failed closed, %d succeeded with their record written", failed, succeeded)
}
