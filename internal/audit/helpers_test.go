package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testOptions disables automatic checkpoints so tests control them.
func testOptions() Options {
	return Options{CheckpointEvery: 1 << 40, CheckpointInterval: -1, InstanceID: "test", Logger: quietLogger(),
		SegmentSize: 1 << 20}
}

func openLog(t testing.TB, dir string, key *ecdsa.PrivateKey, opts Options) *Log {
	t.Helper()
	l, err := Open(context.Background(), dir, key, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l
}

func sampleRecord(i int) Record {
	return Record{
		Identity: fmt.Sprintf("spiffe://example.org/relay-%d", i%3), Role: "relay",
		Method: "/custody.v1.CryptoService/Decrypt", Key: "mail", KeyVersion: 2,
		ContextDigest: testDigest(map[string]string{"conversation": fmt.Sprint(i)}),
		Outcome:       OutcomeOK, Code: "OK",
	}
}

func appendN(t testing.TB, l *Log, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := l.Append(context.Background(), sampleRecord(i)); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
}

func mustVerify(t *testing.T, dir string, key *ecdsa.PrivateKey, anchor *Checkpoint) *Report {
	t.Helper()
	rep, err := Verify(dir, &key.PublicKey, anchor)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return rep
}

func wantVerifyError(t *testing.T, err error, kind Kind, seq uint64) *VerifyError {
	t.Helper()
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Verify error = %v, want *VerifyError %s at seq %d", err, kind, seq)
	}
	if ve.Kind != kind || ve.Seq != seq {
		t.Fatalf("Verify found %s at seq %d (%v), want %s at seq %d", ve.Kind, ve.Seq, ve, kind, seq)
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("VerifyError does not wrap ErrCorrupt")
	}
	return ve
}

func segmentFiles(t testing.TB, dir string) []string {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range segs {
		out = append(out, filepath.Join(dir, s.name))
	}
	return out
}

func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func writeLines(t testing.TB, path string, lines [][]byte) {
	t.Helper()
	var b []byte
	for _, l := range lines {
		b = append(b, bytes.TrimSuffix(l, []byte("\n"))...)
		b = append(b, '\n')
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func appendRaw(t testing.TB, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// testDigest stands in for the server's keyed context digest.
func testDigest(ec map[string]string) []byte {
	h := sha256.New()
	for k, v := range ec {
		h.Write([]byte(k + "=" + v + "\n"))
	}
	return h.Sum(nil)
}
