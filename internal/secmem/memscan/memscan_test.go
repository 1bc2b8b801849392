package memscan

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The child: reads a secret from stdin into memory outside the Go heap
// (so the read leaves no other copy), then places what the parent asks for
// and waits.
const childEnv = "CUSTODY_MEMSCAN_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		child(mode)
		return
	}
	os.Exit(m.Run())
}

var keep [][]byte

func child(mode string) {
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	n, err := io.ReadFull(os.Stdin, mem[:40])
	if err != nil || n != 40 {
		panic(err)
	}
	secret := mem[:40]
	switch mode {
	case "heap": // the whole secret on the Go heap
		b := make([]byte, 40)
		copy(b, secret)
		keep = append(keep, b)
	case "tail": // its first 16 bytes overwritten, as free(3) does
		b := make([]byte, 40)
		copy(b, secret)
		copy(b, "\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0\x00")
		keep = append(keep, b)
	case "short": // only 12 bytes: below MinRun, not a finding
		b := make([]byte, 12)
		copy(b, secret[5:])
		keep = append(keep, b)
	case "none":
	}
	clear(secret)
	runtime.GC()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent is done
	runtime.KeepAlive(keep)
}

func scanChild(t *testing.T, mode string) *Report {
	t.Helper()
	secret, other := make([]byte, 40), make([]byte, 24)
	rand.Read(secret)
	rand.Read(other) // never given to the child
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	in.Write(secret)
	ready := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		ready <- l
	}()
	select {
	case l := <-ready:
		if strings.TrimSpace(l) != "ready" {
			t.Fatalf("child said %q", l)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("child not ready after 60s")
	}
	r, err := Scan(cmd.Process.Pid, map[string][]byte{"the secret": secret, "another": other})
	if err != nil {
		t.Fatal(err)
	}
	if r.Bytes == 0 || r.Mappings == 0 {
		t.Fatalf("nothing scanned: %+v", r)
	}
	// The child was stopped for the scan and runs again.
	for deadline := time.Now().Add(10 * time.Second); allStopped(cmd.Process.Pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the child is still stopped after the scan")
		}
	}
	return r
}

func TestScanFindsAWholeCopyOnTheGoHeap(t *testing.T) {
	r := scanChild(t, "heap")
	if len(r.Findings) != 1 || !r.Findings[0].Whole || r.Findings[0].Secret != "the secret" || r.Findings[0].Len != 40 {
		t.Fatalf("findings: %v", r.Findings)
	}
	if s := r.Findings[0].String(); !strings.Contains(s, "a copy of the secret at 0x") {
		t.Fatalf("finding reads %q", s)
	}
}

func TestScanFindsACopyWhoseHeadWasOverwritten(t *testing.T) {
	r := scanChild(t, "tail")
	if len(r.Findings) != 1 || r.Findings[0].Whole || r.Findings[0].Offset != 16 || r.Findings[0].Len != 24 {
		t.Fatalf("findings: %v", r.Findings)
	}
	if s := r.Findings[0].String(); !strings.Contains(s, "24 bytes of the secret (from byte 16) at 0x") {
		t.Fatalf("finding reads %q", s)
	}
}

func TestScanReportsNothingWhereNoCopyIsLeft(t *testing.T) {
	for _, mode := range []string{"none", "short"} {
		t.Run(mode, func(t *testing.T) {
			r := scanChild(t, mode)
			if len(r.Findings) != 0 {
				t.Fatalf("findings in a clean process: %v", r.Findings)
			}
			t.Logf("%d mappings, %d KiB searched, %d skipped", r.Mappings, r.Bytes>>10, len(r.Skipped))
		})
	}
}

func TestIndexReportsEachRunOnceAcrossChunks(t *testing.T) {
	secret := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCD")
	ix, err := newIndex(map[string][]byte{"s": secret})
	if err != nil {
		t.Fatal(err)
	}
	// The run straddles the split between two searches: the first sees it
	// whole thanks to the overlap; the second must not report its tail.
	data := append(append([]byte("xxxxxxxxxx"), secret...), "yyyyyyyyyy"...)
	var got []string
	report := func(base int) func(i, sec, off, n int) {
		return func(i, sec, off, n int) { got = append(got, fmt.Sprintf("@%d off %d len %d", base+i, off, n)) }
	}
	split := 25
	ix.search(append([]byte{0}, data...), false, split, report(0))
	ix.search(data[split-1:], true, len(data)-split, report(split))
	if len(got) != 1 || got[0] != "@10 off 0 len 40" {
		t.Fatalf("runs: %v", got)
	}
}

func TestNewIndexRefusesTinySecrets(t *testing.T) {
	if _, err := newIndex(map[string][]byte{"pin": []byte("123")}); err == nil {
		t.Fatal("a 3-byte secret was accepted")
	}
	if _, err := newIndex(nil); err == nil {
		t.Fatal("no secrets accepted")
	}
}
