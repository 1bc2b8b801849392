package audit

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestReadAppliesFilter(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	opts := testOptions()
	opts.SegmentSize = 1 << 10
	l := openLog(t, dir, key, opts)
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 30; i++ {
		r := sampleRecord(i)
		r.Time = t0.Add(time.Duration(i) * time.Minute)
		if i%5 == 0 {
			r.Key, r.Method = "billing", "/custody.v1.CryptoService/Unwrap"
		}
		if _, err := l.Append(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	count := func(f Filter) (n int, seqs []uint64) {
		t.Helper()
		err := l.Read(context.Background(), f, func(r Record) error {
			seqs = append(seqs, r.Seq)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return len(seqs), seqs
	}
	if n, _ := count(Filter{}); n != 30 {
		t.Errorf("all: %d", n)
	}
	if n, _ := count(Filter{Key: "billing"}); n != 6 {
		t.Errorf("key: %d", n)
	}
	if n, _ := count(Filter{Identity: "spiffe://example.org/relay-1"}); n != 10 {
		t.Errorf("identity: %d", n)
	}
	if n, _ := count(Filter{Method: "/custody.v1.CryptoService/Unwrap", Key: "billing"}); n != 6 {
		t.Errorf("method: %d", n)
	}
	if n, seqs := count(Filter{Since: t0.Add(10 * time.Minute), Until: t0.Add(20 * time.Minute)}); n != 10 || seqs[0] != 11 {
		t.Errorf("window: %d %v", n, seqs)
	}
	if n, seqs := count(Filter{AfterSeq: 25}); n != 5 || seqs[0] != 26 {
		t.Errorf("after: %d %v", n, seqs)
	}
	stop := errors.New("stop")
	if err := l.Read(context.Background(), Filter{}, func(Record) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("callback error not returned: %v", err)
	}
}

func TestFollowDeliversRecordsAsTheyAreAppended(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	opts := testOptions()
	opts.SegmentSize = 1 << 10 // follow across rotations
	l := openLog(t, dir, key, opts)
	appendN(t, l, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan uint64, 100)
	done := make(chan error, 1)
	go func() {
		done <- l.Follow(ctx, Filter{AfterSeq: 1, Identity: "spiffe://example.org/relay-0"}, func(r Record) error {
			got <- r.Seq
			return nil
		})
	}()
	for i := 3; i < 40; i++ {
		if _, err := l.Append(context.Background(), sampleRecord(i)); err != nil {
			t.Fatal(err)
		}
	}
	// relay-0 records: sampleRecord(i) with i%3 == 0, i.e. seqs 1, 4, 7, ... (seq = i+1 for i>=3, 1..3 for the first three).
	var want []uint64
	for seq := uint64(4); seq <= 40; seq += 3 {
		want = append(want, seq)
	}
	for _, w := range want {
		select {
		case s := <-got:
			if s != w {
				t.Fatalf("Follow delivered %d, want %d", s, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Follow did not deliver %d", w)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Follow returned %v", err)
	}
}

func TestFollowEndsWhenLogCloses(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l, err := Open(context.Background(), dir, key, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Follow(context.Background(), Filter{}, func(Record) error { return nil }) }()
	l.Close(context.Background())
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Follow = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Follow did not return after Close")
	}
}
