package auditmark

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm/hsmtest"
	"github.com/custodyhq/custody/internal/audit"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// auditLog opens an audit log in dir whose checkpoints carry store
// revision rev and go to sink.
func auditLog(t *testing.T, dir string, key *ecdsa.PrivateKey, sink audit.AnchorSink, rev uint64) *audit.Log {
	t.Helper()
	l, err := audit.Open(context.Background(), dir, key, audit.Options{CheckpointEvery: 1 << 40, CheckpointInterval: -1,
		InstanceID: "vault", Logger: quiet(), Sink: sink, StoreRevision: func() uint64 { return rev }})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func appendN(t *testing.T, l *audit.Log, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := l.Append(context.Background(), audit.Record{Identity: "spiffe://t/relay", Method: "Decrypt", Key: "k",
			Outcome: audit.OutcomeOK, Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// position is what custodyd reads at start from a closed log directory.
func position(t *testing.T, dir string, key *ecdsa.PrivateKey, rev uint64) Position {
	t.Helper()
	l, err := audit.Open(context.Background(), dir, key, audit.Options{CheckpointEvery: 1 << 40, CheckpointInterval: -1, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(context.Background())
	seq, _ := l.Head()
	p := Position{AuditDir: dir, Head: seq, Store: "custody.db", StoreRevision: rev}
	if cp, ok := l.LatestCheckpoint(); ok {
		p.LatestCheckpoint = cp.Seq
	}
	return p
}

// TestTheMarkFollowsCheckpointsInOneTokenObject: the Writer, as the audit
// log's anchor sink, keeps the newest checkpoint in one private token
// object (replaced, never added to), never moves it back, and Read finds
// exactly it.
func TestTheMarkFollowsCheckpointsInOneTokenObject(t *testing.T) {
	m, _ := hsmtest.Open(t)
	key := newKey(t)
	w := NewWriter(Options{Interval: time.Millisecond, Logger: quiet()})
	l := auditLog(t, t.TempDir(), key, w, 7)
	defer l.Close(context.Background())
	appendN(t, l, 3)
	cp1, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if got, err := Read(ctx, m, Scope{}); err != nil || got != nil {
		t.Fatalf("before Arm: %v %v", got, err)
	}
	w.Arm(m, nil)
	waitFlushed(t, w, cp1.Seq)
	appendN(t, l, 2)
	cp2, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	waitFlushed(t, w, cp2.Seq)
	got, err := Read(ctx, m, Scope{})
	if err != nil || got == nil || got.Checkpoint.Seq != 5 || got.Checkpoint.StoreRevision != 7 {
		t.Fatalf("Read: %+v %v", got, err)
	}
	if err := got.Checkpoint.Verify(&key.PublicKey); err != nil {
		t.Fatalf("the mark is not the signed checkpoint: %v", err)
	}
	if vals, _ := m.DataObjects(ctx, Label); len(vals) != 1 {
		t.Fatalf("%d mark objects on the token, want 1", len(vals))
	}
	// An older checkpoint never moves the mark back.
	_ = w.Anchor(ctx, cp1)
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := Read(ctx, m, Scope{}); got.Checkpoint.Seq != 5 {
		t.Fatalf("the mark moved back to %d", got.Checkpoint.Seq)
	}
	// Two marks for one vault are ambiguous: refused, not guessed.
	if err := m.CreateDataObject(ctx, Label, mustJSON(t, cp1)); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(ctx, m, Scope{}); !errors.Is(err, ErrMark) {
		t.Fatalf("two marks: %v, want ErrMark", err)
	}
	// Replicas of a shared store each keep their own: another replica's
	// scope sees none of these.
	if got, err := Read(ctx, m, Scope{Shared: true, Instance: "replica-3"}); err != nil || got != nil {
		t.Fatalf("another replica's scope: %+v %v", got, err)
	}
}

func mustJSON(t *testing.T, cp audit.Checkpoint) []byte {
	t.Helper()
	b, err := json.Marshal(Mark{Format: Format, Checkpoint: cp})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func waitFlushed(t *testing.T, w *Writer, seq uint64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if st := w.Status(); st.Written != nil && st.Written.Seq >= seq {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mark %d not written: %+v", seq, w.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}

// TestCheckRefusesWhatRootCanDoToTheFilesAndNamesBothPositions: against the
// token's mark, an intact directory and store pass; an emptied directory,
// one restored from an older copy, one whose records were deleted and
// re-chained (a fresh chain under root's own key), one with checkpoints.log
// removed, and an older store are each refused with a message naming the
// directory or store and both positions.
func TestCheckRefusesWhatRootCanDoToTheFilesAndNamesBothPositions(t *testing.T) {
	key := newKey(t)
	dir := filepath.Join(t.TempDir(), "audit")
	old := filepath.Join(t.TempDir(), "old")
	l := auditLog(t, dir, key, nil, 40)
	appendN(t, l, 5)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.Close(context.Background())
	copyDir(t, dir, old)
	l = auditLog(t, dir, key, nil, 42)
	appendN(t, l, 5)
	cp, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 2) // records after the mark: allowed
	l.Close(context.Background())
	mark := &Mark{Format: Format, Checkpoint: cp}

	if err := Check(mark, position(t, dir, key, 42), &key.PublicKey); err != nil {
		t.Fatalf("intact directory and store: %v", err)
	}
	if err := Check(nil, position(t, old, key, 1), &key.PublicKey); err != nil {
		t.Fatalf("no mark on the token: %v", err)
	}

	empty := filepath.Join(t.TempDir(), "empty")
	cases := []struct {
		name  string
		dir   func() string
		rev   uint64
		wants []string
	}{
		{"emptied", func() string { return empty }, 42, []string{"is empty", "record 10"}},
		{"older copy", func() string { return old }, 42, []string{"ends at record 5", "record 10"}},
		{"re-chained", func() string {
			d := filepath.Join(t.TempDir(), "forged")
			f := auditLog(t, d, newKey(t), nil, 42) // root's own key: the chain is consistent, its signatures are not the vault's
			appendN(t, f, 13)
			f.Close(context.Background())
			os.Remove(filepath.Join(d, "checkpoints.log"))
			b, _ := os.ReadFile(filepath.Join(dir, "checkpoints.log"))
			os.WriteFile(filepath.Join(d, "checkpoints.log"), b, 0o600)
			return d
		}, 42, []string{"does not verify against the token's audit mark", "rewritten"}},
		{"checkpoints removed", func() string {
			d := filepath.Join(t.TempDir(), "nockpt")
			copyDir(t, dir, d)
			os.Remove(filepath.Join(d, "checkpoints.log"))
			return d
		}, 42, []string{"checkpoints.log holds no signed checkpoint at or after record 10", "trimmed or removed"}},
		{"older store", func() string { return dir }, 40, []string{"store custody.db is at revision 40, older than revision 42"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := c.dir()
			os.MkdirAll(d, 0o700)
			err := Check(mark, position(t, d, key, c.rev), &key.PublicKey)
			if !errors.Is(err, ErrBehind) {
				t.Fatalf("%v, want ErrBehind", err)
			}
			for _, w := range c.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal lacks %q:\n%v", w, err)
				}
			}
			if !strings.Contains(err.Error(), d) && c.name != "older store" {
				t.Errorf("refusal does not name the directory %s:\n%v", d, err)
			}
		})
	}
}

// TestReplicasOfASharedStoreKeepAMarkEach: two replicas on one token (a
// shared store) write their own marks, replaced in place, and each reads
// back its own.
func TestReplicasOfASharedStoreKeepAMarkEach(t *testing.T) {
	m, _ := hsmtest.Open(t)
	key := newKey(t)
	ctx := context.Background()
	var ws []*Writer
	for i, name := range []string{"host:/a", "host:/b"} {
		w := NewWriter(Options{Scope: Scope{Shared: true, Instance: name}, Logger: quiet()})
		w.Arm(m, nil)
		l := auditLog(t, t.TempDir(), key, w, uint64(10+i))
		appendN(t, l, 2+i)
		if _, err := l.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		appendN(t, l, 1)
		if _, err := l.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		l.Close(ctx)
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	for i, name := range []string{"host:/a", "host:/b"} {
		got, err := Read(ctx, m, Scope{Shared: true, Instance: name})
		if err != nil || got == nil || got.Checkpoint.Seq != uint64(3+i) || got.Checkpoint.StoreRevision != uint64(10+i) {
			t.Fatalf("%s: %+v %v", name, got, err)
		}
	}
	if vals, _ := m.DataObjects(ctx, Label); len(vals) != 2 {
		t.Fatalf("%d mark objects, want one per replica", len(vals))
	}
	if _, err := Read(ctx, m, Scope{}); !errors.Is(err, ErrMark) {
		t.Fatalf("a lone vault on a token with two marks: %v, want ErrMark", err)
	}
}
