package admission

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func counter(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" || labelIs(m, "reason", reason) {
				if m.Counter != nil {
					return m.Counter.GetValue()
				}
				return m.Gauge.GetValue()
			}
		}
	}
	t.Fatalf("metric %s{reason=%q} not found", name, reason)
	return 0
}

func labelIs(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func TestIdentityBeyondItsCapIsRefusedWhileOthersAreAdmitted(t *testing.T) {
	reg := prometheus.NewRegistry()
	l, err := New(Options{MaxPerIdentity: 2, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	r1, err1 := l.Acquire("relay-a")
	r2, err2 := l.Acquire("relay-a")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	_, err = l.Acquire("relay-a")
	var ref *Refusal
	if !errors.As(err, &ref) || !errors.Is(err, ErrInflight) || ref.RetryAfter != DefaultInflightRetry || ref.Limit != 2 {
		t.Fatalf("third request of relay-a: %v", err)
	}
	rb, err := l.Acquire("relay-b")
	if err != nil {
		t.Fatalf("relay-b refused because of relay-a: %v", err)
	}
	r1()
	r1() // a second release must not free a second slot
	if got := l.InFlight("relay-a"); got != 1 {
		t.Fatalf("relay-a in flight after one release = %d", got)
	}
	r3, err := l.Acquire("relay-a")
	if err != nil {
		t.Fatalf("relay-a refused after a release: %v", err)
	}
	if _, err := l.Acquire("relay-a"); !errors.Is(err, ErrInflight) {
		t.Fatalf("double release freed an extra slot: %v", err)
	}
	if got := counter(t, reg, "custody_inflight_refusals_total", "identity"); got != 2 {
		t.Fatalf("identity refusals = %v, want 2", got)
	}
	if got := counter(t, reg, "custody_inflight_requests", ""); got != 3 {
		t.Fatalf("in flight gauge = %v, want 3", got)
	}
	r2()
	r3()
	rb()
	if l.InFlight("relay-a") != 0 || len(l.inflight) != 0 {
		t.Fatalf("identities left behind: %v", l.inflight)
	}
}

func TestConcurrentRequestsNeverExceedTheCap(t *testing.T) {
	const capN = 4
	l, err := New(Options{MaxPerIdentity: capN})
	if err != nil {
		t.Fatal(err)
	}
	var held, peak, refused atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				rel, err := l.Acquire("relay")
				if err != nil {
					refused.Add(1)
					continue
				}
				n := held.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				runtime.Gosched()
				held.Add(-1)
				rel()
			}
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > capN || p < 1 {
		t.Fatalf("peak in flight %d, cap %d", p, capN)
	}
	if refused.Load() == 0 {
		t.Fatal("32 goroutines on a cap of 4 were never refused")
	}
}

func TestMemoryPressureRefusesNewWorkAndRecoversWhenFreed(t *testing.T) {
	runtime.GC()
	g0 := NewMemoryGuard(1<<40, 50)
	base := g0.LiveHeap()
	// Refuse above base+48 MiB: a 96 MiB ballast crosses it.
	limit := int64(base+48<<20) * 2
	reg := prometheus.NewRegistry()
	g := NewMemoryGuard(limit, 50)
	l, err := New(Options{MaxPerIdentity: 10, Memory: g, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if rel, err := l.Acquire("relay"); err != nil {
		t.Fatalf("refused with no ballast (live %d, refuse above %d): %v", g.LiveHeap(), g.RefuseAbove(), err)
	} else {
		rel()
	}
	ballast := make([][]byte, 96)
	for i := range ballast {
		ballast[i] = make([]byte, 1<<20)
		ballast[i][0] = byte(i)
	}
	runtime.GC()
	time.Sleep(2 * sampleEvery)
	_, err = l.Acquire("relay")
	var ref *Refusal
	if !errors.As(err, &ref) || !errors.Is(err, ErrMemory) || ref.RetryAfter != DefaultMemoryRetry {
		t.Fatalf("with a ballast over the threshold (live %d, refuse above %d): %v", g.LiveHeap(), g.RefuseAbove(), err)
	}
	if l.InFlight("relay") != 0 {
		t.Fatal("a memory refusal took an in-flight slot")
	}
	if got := counter(t, reg, "custody_inflight_refusals_total", "memory"); got != 1 {
		t.Fatalf("memory refusals = %v", got)
	}
	runtime.KeepAlive(ballast)
	ballast = nil
	// The guard itself starts a collection while under pressure; recovery
	// needs no help from the caller. Bounded: 10s.
	deadline := time.Now().Add(10 * time.Second)
	for {
		rel, err := l.Acquire("relay")
		if err == nil {
			rel()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refused 10s after the ballast was dropped (live %d): %v", g.LiveHeap(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestHostMemoryLimitIsBelowPhysicalMemory(t *testing.T) {
	n, src := HostMemoryLimit()
	total, ok := memTotal()
	if !ok {
		t.Fatal("cannot read /proc/meminfo")
	}
	if n <= 0 || n >= total || src == "" {
		t.Fatalf("HostMemoryLimit = %d (%q); physical memory %d", n, src, total)
	}
}

func TestNewRefusesCapBelowOne(t *testing.T) {
	if _, err := New(Options{}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("New with cap 0: %v", err)
	}
}
