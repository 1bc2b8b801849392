package audit

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchAppend runs b.N appends from 8 goroutines and reports records/fsync.
func benchAppend(b *testing.B, groupCommit bool) {
	opts := testOptions()
	opts.DisableGroupCommit = !groupCommit
	benchAppendOpts(b, opts)
}

func benchAppendOpts(b *testing.B, opts Options) {
	opts.SegmentSize = 64 << 20 // as in production
	l := openLog(b, b.TempDir(), newKey(b), opts)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if _, err := l.Append(context.Background(), sampleRecord(w)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	st := l.Stats()
	b.ReportMetric(float64(st.Records)/float64(st.Fsyncs), "records/fsync")
}

func BenchmarkAppendConcurrency8GroupCommit(b *testing.B)    { benchAppend(b, true) }
func BenchmarkAppendConcurrency8FsyncPerRecord(b *testing.B) { benchAppend(b, false) }

func BenchmarkAppendConcurrency8NoPreallocation(b *testing.B) {
	opts := testOptions()
	opts.DisablePreallocation = true
	benchAppendOpts(b, opts)
}

// BenchmarkAppendConcurrency1 is one appender: each record waits for its
// own flush, so ns/op is the latency Append adds to a request.
func BenchmarkAppendConcurrency1(b *testing.B) {
	opts := testOptions()
	opts.SegmentSize = 64 << 20
	l := openLog(b, b.TempDir(), newKey(b), opts)
	ctx := context.Background()
	rec := sampleRecord(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := l.Append(ctx, rec); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendLatency1 reports the median latency of one appender.
func BenchmarkAppendLatency1(b *testing.B) {
	opts := testOptions()
	opts.SegmentSize = 64 << 20
	l := openLog(b, b.TempDir(), newKey(b), opts)
	ctx := context.Background()
	rec := sampleRecord(1)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t := time.Now()
		if _, err := l.Append(ctx, rec); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*9/10].Nanoseconds())/1e3, "p90-µs")
}
