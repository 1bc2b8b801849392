package hsm_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/secmem"
	"github.com/custodyhq/custody/internal/secmem/memscan"
)

// The child process of TestModuleKeepsNoCopyOfThePIN runs the module; the
// test (the parent) knows the PINs and searches the child's memory. The
// child receives each PIN on stdin straight into locked memory outside the
// Go heap and destroys that buffer once the module has it, so any copy the
// scan finds was made by the module (or the PKCS#11 library under it).
const (
	pinChildEnv    = "CUSTODY_HSM_PIN_CHILD"
	pinChildDirEnv = "CUSTODY_HSM_PIN_CHILD_TOKENDIR"
	pinChildURIEnv = "CUSTODY_HSM_PIN_CHILD_URI"
	childPINLen    = 40
)

// TestModuleKeepsNoCopyOfThePIN: after Open (with the profile detected
// from the module, which checks the PIN's form), after a recovery from the
// token going away (a re-login with the kept PIN), after ChangePIN, after a
// reverted ChangePIN, after a second recovery and after Close, no readable
// page of the process holds any of the PINs it was given, whole or any
// memscan.MinRun bytes of them: not the Go heap, not a goroutine stack, not
// the C heap (miekg/pkcs11's C.CString copies), not the module's own.
func TestModuleKeepsNoCopyOfThePIN(t *testing.T) {
	if os.Getenv(pinChildEnv) != "" {
		pinChild()
		return
	}
	tok := hsmtest.New(t)
	pins := map[string][]byte{}
	for _, n := range []string{"P1", "P2", "P3"} {
		pins[n] = randomPIN(t)
	}
	// P1 becomes the token's PIN here, in the test process (not scanned).
	ctx := ctxT(t)
	m, err := hsm.Open(ctx, tok.Config())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := m.ChangePIN(ctx, pins["P1"])
	if err != nil {
		t.Fatal(err)
	}
	ch.Done()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	c := startPINChild(t, tok)
	c.send(t, pins["P1"])
	c.expect(t, "opened")
	c.scan(t, "after Open", pins, "P1")
	c.send(t, []byte("r"))
	c.expect(t, "recovered")
	c.scan(t, "after a recovery", pins, "P1")
	c.send(t, []byte("c"), pins["P2"])
	c.expect(t, "changed")
	c.scan(t, "after ChangePIN", pins, "P1", "P2")
	c.send(t, []byte("v"), pins["P3"])
	c.expect(t, "reverted")
	c.scan(t, "after a reverted ChangePIN", pins, "P1", "P2", "P3")
	c.send(t, []byte("r"))
	c.expect(t, "recovered")
	c.scan(t, "after a second recovery", pins, "P1", "P2", "P3")
	c.send(t, []byte("q"))
	c.expect(t, "closed")
	c.scan(t, "after Close", pins, "P1", "P2", "P3")

	// The child did change the PIN: P2 logs in, P1 and P3 do not.
	for n, want := range map[string]error{"P1": hsm.ErrLogin, "P2": nil, "P3": hsm.ErrLogin} {
		cfg := tok.Config()
		cfg.PIN = pins[n]
		if err := probeLogin(t, cfg); !errors.Is(err, want) {
			t.Errorf("%s after the child's changes: %v, want %v", n, err, want)
		}
	}
}

func randomPIN(t *testing.T) []byte {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, childPINLen)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return b
}

type pinChildProc struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

func startPINChild(t *testing.T, tok *hsmtest.Token) *pinChildProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestModuleKeepsNoCopyOfThePIN$", "-test.count=1")
	cmd.Env = append(os.Environ(), pinChildEnv+"=1", pinChildDirEnv+"="+tok.TokenDir, pinChildURIEnv+"="+tok.URI)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &pinChildProc{cmd: cmd, in: in, lines: make(chan string, 64)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return c
}

func (c *pinChildProc) send(t *testing.T, parts ...[]byte) {
	t.Helper()
	for _, p := range parts {
		if _, err := c.in.Write(p); err != nil {
			t.Fatalf("to the child: %v", err)
		}
	}
}

func (c *pinChildProc) expect(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(90 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			switch {
			case !ok:
				t.Fatalf("the child exited before %q", want)
			case l == want:
				return
			case strings.HasPrefix(l, "error: "):
				t.Fatalf("child: %s", l)
			}
		case <-timeout:
			t.Fatalf("the child did not say %q within 90s", want)
		}
	}
}

func (c *pinChildProc) scan(t *testing.T, when string, pins map[string][]byte, names ...string) {
	t.Helper()
	secrets := map[string][]byte{}
	for _, n := range names {
		secrets["PIN "+n] = pins[n]
	}
	r, err := memscan.Scan(c.cmd.Process.Pid, secrets)
	if err != nil {
		t.Fatalf("memory scan %s: %v", when, err)
	}
	for _, f := range r.Findings {
		t.Errorf("%s, the process holds %s", when, f)
	}
	if len(r.Skipped) > 0 || r.Bytes < 1<<20 {
		t.Errorf("memory scan %s: %d KiB read, unreadable mappings %v", when, r.Bytes>>10, r.Skipped)
	}
	t.Logf("memory scan %s: %d mappings, %d KiB", when, r.Mappings, r.Bytes>>10)
}

// pinChild is the child's side: it reports each step on stdout and fails
// with a line starting "error: ".
func pinChild() {
	fail := func(format string, args ...any) {
		fmt.Printf("error: "+format+"\n", args...)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	readPIN := func() *secmem.Buffer {
		b, err := secmem.New(childPINLen)
		if err != nil {
			fail("secmem: %v", err)
		}
		if _, err := io.ReadFull(os.Stdin, b.Bytes()); err != nil {
			fail("read PIN: %v", err)
		}
		return b
	}
	pin := readPIN()
	// No profile: it is detected from the module, and its PIN check runs.
	m, err := hsm.Open(ctx, hsm.Config{URI: os.Getenv(pinChildURIEnv), PIN: pin.Bytes(), RecoveryBackoffMax: 200 * time.Millisecond})
	pin.Destroy()
	if err != nil {
		fail("open: %v", err)
	}
	k, _, err := m.CreateKey(ctx, hsm.KindAES256, "k")
	if err != nil {
		fail("create key: %v", err)
	}
	use := func() error { _, _, err := m.Encrypt(ctx, k, []byte("x"), nil); return err }
	if err := use(); err != nil {
		fail("encrypt: %v", err)
	}
	settle := func(step string) {
		runtime.GC()
		fmt.Println(step)
	}
	settle("opened")
	dir := os.Getenv(pinChildDirEnv)
	cmd := make([]byte, 1)
	for {
		if _, err := io.ReadFull(os.Stdin, cmd); err != nil {
			return
		}
		switch cmd[0] {
		case 'r': // the token goes away and comes back
			if err := os.Rename(dir, dir+".away"); err != nil {
				fail("%v", err)
			}
			if !waitUntil(func() bool { return errors.Is(use(), hsm.ErrUnavailable) }) {
				fail("the token went away but calls still succeed")
			}
			if err := os.Rename(dir+".away", dir); err != nil {
				fail("%v", err)
			}
			if !waitUntil(func() bool { return use() == nil }) {
				fail("not recovered: %v", use())
			}
			settle("recovered")
		case 'c', 'v':
			pin := readPIN()
			ch, err := m.ChangePIN(ctx, pin.Bytes())
			pin.Destroy()
			if err != nil {
				fail("change PIN: %v", err)
			}
			if cmd[0] == 'c' {
				ch.Done()
				settle("changed")
				continue
			}
			if err := ch.Revert(ctx); err != nil {
				fail("revert: %v", err)
			}
			settle("reverted")
		case 'q':
			if err := m.Close(); err != nil {
				fail("close: %v", err)
			}
			settle("closed")
		}
	}
}

// waitUntil polls cond for up to 30 seconds.
func waitUntil(cond func() bool) bool {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}
