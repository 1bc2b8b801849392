package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestCheckpointsEveryNRecordsReachBothSinks(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	var mu sync.Mutex
	var posted []Checkpoint
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var cp Checkpoint
		if err := json.NewDecoder(r.Body).Decode(&cp); err != nil || r.Method != http.MethodPost {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		mu.Lock()
		posted = append(posted, cp)
		mu.Unlock()
	}))
	defer srv.Close()
	anchorFile := filepath.Join(t.TempDir(), "anchors.log")
	opts := testOptions()
	opts.CheckpointEvery = 10
	opts.Sink = multiSink{&FileSink{Path: anchorFile}, &HTTPSink{URL: srv.URL}}
	l := openLog(t, dir, key, opts)
	appendN(t, l, 35)
	// Checkpoints requested while one is being signed coalesce into one of
	// the newest head, so count on the newest, not on exactly three.
	eventually(t, "a checkpoint at or after 30 anchored", func() bool {
		cp, ok := l.LatestCheckpoint()
		st := l.Stats()
		return ok && cp.Seq >= 30 && st.Anchored == st.Checkpoints
	})
	cp, ok := l.LatestCheckpoint()
	if !ok || cp.InstanceID != "test" {
		t.Fatalf("LatestCheckpoint = %+v, %v", cp, ok)
	}
	if err := cp.Verify(&key.PublicKey); err != nil {
		t.Fatal(err)
	}
	fromFile, err := ReadCheckpoints(filepath.Dir(anchorFile)) // reads checkpoints.log only
	if err != nil || len(fromFile) != 0 {
		t.Fatalf("ReadCheckpoints on a non-log dir = %v, %v", fromFile, err)
	}
	lines := readLines(t, anchorFile)
	if uint64(len(lines)) != l.Stats().Checkpoints {
		t.Fatalf("file sink has %d lines", len(lines))
	}
	var last Checkpoint
	if err := json.Unmarshal(lines[len(lines)-1], &last); err != nil {
		t.Fatal(err)
	}
	// An anchored checkpoint serves as the external anchor for Verify.
	if rep := mustVerify(t, dir, key, &last); !rep.AnchorChecked {
		t.Fatalf("anchor not checked: %+v", rep)
	}
	mu.Lock()
	n := len(posted)
	mu.Unlock()
	if uint64(n) != l.Stats().Checkpoints {
		t.Fatalf("http sink received %d checkpoints", n)
	}
}

type multiSink []AnchorSink

func (m multiSink) Anchor(ctx context.Context, cp Checkpoint) error {
	var errs []error
	for _, s := range m {
		errs = append(errs, s.Anchor(ctx, cp))
	}
	return errors.Join(errs...)
}

type blockingSink struct{ release chan struct{} }

func (s blockingSink) Anchor(ctx context.Context, _ Checkpoint) error {
	select {
	case <-s.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestSinkFailuresAreCountedAndNeverBlockAppend(t *testing.T) {
	t.Run("http error status", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "down", http.StatusServiceUnavailable)
		}))
		defer srv.Close()
		opts := testOptions()
		opts.CheckpointEvery = 5
		opts.Sink = &HTTPSink{URL: srv.URL}
		l := openLog(t, t.TempDir(), newKey(t), opts)
		appendN(t, l, 20)
		eventually(t, "anchor errors", func() bool { return l.Stats().AnchorErrors > 0 })
		if l.Healthy() != nil {
			t.Fatal("a sink failure made the log unhealthy")
		}
	})
	t.Run("sink that hangs", func(t *testing.T) {
		opts := testOptions()
		opts.CheckpointEvery = 1
		opts.SinkTimeout = time.Hour
		sink := blockingSink{release: make(chan struct{})}
		opts.Sink = sink
		l := openLog(t, t.TempDir(), newKey(t), opts)
		done := make(chan struct{})
		go func() { appendN(t, l, 200); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Append blocked behind a hanging sink")
		}
		close(sink.release)
	})
	t.Run("sink timeout", func(t *testing.T) {
		opts := testOptions()
		opts.CheckpointEvery = 1
		opts.SinkTimeout = 20 * time.Millisecond
		opts.Sink = blockingSink{release: make(chan struct{})}
		l := openLog(t, t.TempDir(), newKey(t), opts)
		appendN(t, l, 1)
		eventually(t, "timed-out anchor counted", func() bool { return l.Stats().AnchorErrors > 0 })
	})
}

func TestCheckpointIntervalSignsIdleHead(t *testing.T) {
	opts := testOptions()
	opts.CheckpointInterval = 20 * time.Millisecond
	l := openLog(t, t.TempDir(), newKey(t), opts)
	if _, err := l.Checkpoint(context.Background()); !errors.Is(err, ErrNoRecords) {
		t.Fatalf("Checkpoint of empty log = %v, want ErrNoRecords", err)
	}
	appendN(t, l, 3)
	eventually(t, "timed checkpoint", func() bool { cp, ok := l.LatestCheckpoint(); return ok && cp.Seq == 3 })
	// On a busy machine the timer may also have fired between the appends
	// (a checkpoint of seq 1 or 2); what matters is that the idle head is
	// not signed again.
	n := l.Stats().Checkpoints
	time.Sleep(100 * time.Millisecond)
	if st := l.Stats(); st.Checkpoints != n {
		t.Fatalf("idle log signed %d more checkpoints of the same head", st.Checkpoints-n)
	}
}

func TestCheckpointsWithEd25519Key(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l, err := Open(context.Background(), dir, priv, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 3)
	l.Close(context.Background())
	rep, err := Verify(dir, pub, nil)
	if err != nil || rep.CheckpointsMatched != 1 {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
}

func TestTornCheckpointLineDoesNotCorruptNextCheckpoint(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	appendN(t, l, 2)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, checkpointsFile)
	lines := readLines(t, path)
	writeLines(t, path, lines)
	// Simulate a torn write of a checkpoint line.
	appendRaw(t, path, `{"seq":2,"he`)
	appendN(t, l, 2)
	if _, err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, dir, key, nil)
	if rep.Checkpoints != 2 || rep.LastCheckpoint.Seq != 4 {
		t.Fatalf("report = %+v", rep)
	}
}
