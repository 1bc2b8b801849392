package audit

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
)

// benchAppend runs b.N appends from 8 goroutines and reports records/fsync.
func benchAppend(b *testing.B, groupCommit bool) {
	opts := testOptions()
	opts.DisableGroupCommit = !groupCommit
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
