package admission

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// liveHeapMetric is the heap still reachable at the end of the last
// garbage collection: what a collection cannot free. Garbage awaiting
// collection is not pressure; the soft memory limit makes the collector
// run harder as the total nears the limit, and this figure is refreshed
// by each of those cycles.
const liveHeapMetric = "/gc/heap/live:bytes"

// sampleEvery bounds how often the runtime is asked; between samples the
// last figure is used.
const sampleEvery = 10 * time.Millisecond

// gcEvery bounds the collections MemoryGuard forces while under pressure.
const gcEvery = time.Second

// MemoryGuard reports memory pressure: the live heap above a fraction of
// the soft memory limit.
type MemoryGuard struct {
	limit       int64
	refuseAbove uint64

	sampledAt atomic.Int64 // unix nanoseconds
	live      atomic.Uint64
	lastGC    atomic.Int64
	gcBusy    atomic.Bool
}

// NewMemoryGuard returns a guard that reports pressure while the live heap
// is at or above refusePercent of limit bytes.
func NewMemoryGuard(limit int64, refusePercent int) *MemoryGuard {
	return &MemoryGuard{limit: limit, refuseAbove: uint64(limit / 100 * int64(refusePercent))}
}

// Limit is the memory limit the guard was made for.
func (g *MemoryGuard) Limit() int64 { return g.limit }

// RefuseAbove is the live-heap size from which Pressure reports true.
func (g *MemoryGuard) RefuseAbove() uint64 { return g.refuseAbove }

// LiveHeap returns the live heap at the last collection (sampled at most
// every 10ms).
func (g *MemoryGuard) LiveHeap() uint64 {
	now := time.Now().UnixNano()
	if now-g.sampledAt.Load() < int64(sampleEvery) {
		return g.live.Load()
	}
	s := []metrics.Sample{{Name: liveHeapMetric}}
	metrics.Read(s)
	v := uint64(0)
	if s[0].Value.Kind() == metrics.KindUint64 {
		v = s[0].Value.Uint64()
	}
	g.live.Store(v)
	g.sampledAt.Store(now)
	return v
}

// Pressure reports whether new work should be refused. While it is true
// the guard starts a garbage collection at most once a second, so the
// figure it goes by is fresh and refusals stop as soon as memory is
// freed, rather than when the next collection happens to run.
func (g *MemoryGuard) Pressure() bool {
	if g.LiveHeap() < g.refuseAbove {
		return false
	}
	now := time.Now().UnixNano()
	if now-g.lastGC.Load() >= int64(gcEvery) && g.gcBusy.CompareAndSwap(false, true) {
		g.lastGC.Store(now)
		go func() {
			defer g.gcBusy.Store(false)
			runtime.GC()
			g.sampledAt.Store(0)
		}()
	}
	return true
}

func (g *MemoryGuard) register(reg prometheus.Registerer) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "custody", Subsystem: "memory", Name: "limit_bytes",
			Help: "The Go runtime's soft memory limit."}, func() float64 { return float64(g.limit) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "custody", Subsystem: "memory", Name: "refuse_above_bytes",
			Help: "Live heap from which new requests are refused with UNAVAILABLE."}, func() float64 { return float64(g.refuseAbove) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "custody", Subsystem: "memory", Name: "live_heap_bytes",
			Help: "Heap reachable at the end of the last garbage collection."}, func() float64 { return float64(g.LiveHeap()) }),
	)
}

// HostMemoryLimit derives a soft memory limit from the host: 80% of the
// cgroup's memory limit when there is one (containers, systemd's
// MemoryMax=), else 50% of physical memory. source says which; it returns
// 0 when neither can be read.
func HostMemoryLimit() (limit int64, source string) {
	if n, ok := cgroupLimit(); ok {
		return n / 10 * 8, "80% of the cgroup memory limit"
	}
	if n, ok := memTotal(); ok {
		return n / 2, "50% of physical memory"
	}
	return 0, ""
}

// cgroupLimit reads cgroup v2's memory.max or v1's memory.limit_in_bytes
// of the process's own cgroup (as mounted in its namespace).
func cgroupLimit() (int64, bool) {
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
		// "max" (v2) or a huge page-rounded number (v1) mean no limit.
		if err != nil || n <= 0 || n >= 1<<60 {
			continue
		}
		return n, true
	}
	return 0, false
}

func memTotal() (int64, bool) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[0] == "MemTotal:" && fields[2] == "kB" {
			if n, err := strconv.ParseInt(fields[1], 10, 64); err == nil && n > 0 {
				return n << 10, true
			}
		}
	}
	return 0, false
}
