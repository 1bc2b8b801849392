package daemon

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestTheBackgroundAuditCheckIsBounded: a check held up where ctx cannot
// reach it (an open of a FIFO put in place of a segment, a read from a
// stalled device) ends in errPrefixCheckTimedOut once its limit has passed;
// a check that ends gives its own result; shutdown ends the wait.
func TestTheBackgroundAuditCheckIsBounded(t *testing.T) {
	stuck := make(chan struct{})
	defer close(stuck)
	start := time.Now()
	err := bounded(context.Background(), 100*time.Millisecond, func(context.Context) error { <-stuck; return nil })
	if !errors.Is(err, errPrefixCheckTimedOut) {
		t.Fatalf("a stuck check: %v, want errPrefixCheckTimedOut", err)
	}
	if waited := time.Since(start); waited > 30*time.Second {
		t.Fatalf("a stuck check held the caller %s", waited)
	}
	found := errors.New("record 7 was edited")
	if err := bounded(context.Background(), time.Minute, func(context.Context) error { return found }); !errors.Is(err, found) {
		t.Fatalf("a check that ends: %v, want its result", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := bounded(ctx, time.Minute, func(context.Context) error { <-stuck; return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("shutdown: %v, want context.Canceled", err)
	}
	if prefixCheckLimit(100_000) < time.Minute || prefixCheckLimit(100_000_000) < prefixCheckLimit(100_000) {
		t.Fatalf("limits %s and %s", prefixCheckLimit(100_000), prefixCheckLimit(100_000_000))
	}
}
