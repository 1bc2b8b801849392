package main

import (
	"math/bits"
	"time"
)

// latencyHist is a log-linear latency histogram in the manner of HDR
// histograms: values below 2^histSubBits ns are exact, and above that every
// power of two is split into 2^histSubBits buckets, so any recorded value is
// known to within 1/64 (about 1.6%). It has a fixed size whatever the run
// length, so a long or high-rate run costs no memory growth and no sort.
// Each worker owns one; they are merged after the run. Not safe for
// concurrent use.
type latencyHist struct {
	counts   [histBuckets]uint64
	n        uint64
	sum, max uint64 // nanoseconds
}

const (
	histSubBits = 6
	histSub     = 1 << histSubBits
	// 64-bit values need at most (64-histSubBits)+1 groups of histSub buckets.
	histBuckets = (64 - histSubBits + 1) << histSubBits
)

// histIndex returns the bucket of v (nanoseconds).
func histIndex(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - (histSubBits + 1)
	m := v >> uint(shift) // in [histSub, 2*histSub)
	return (shift+1)<<histSubBits + int(m-histSub)
}

// histBounds returns the smallest and largest value that fall into bucket i.
func histBounds(i int) (lo, hi uint64) {
	if i < histSub {
		return uint64(i), uint64(i)
	}
	shift := uint(i>>histSubBits - 1)
	m := uint64(i&(histSub-1)) + histSub
	return m << shift, (m+1)<<shift - 1
}

func (h *latencyHist) record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[histIndex(v)]++
	h.n++
	h.sum += v
	h.max = max(h.max, v)
}

func (h *latencyHist) merge(o *latencyHist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// quantile returns the latency at or below which a fraction q of the
// recorded values lie: the midpoint of the bucket holding that rank, never
// more than the largest value recorded.
func (h *latencyHist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if float64(rank) < q*float64(h.n) {
		rank++
	}
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := histBounds(i)
			return time.Duration(min(lo+(hi-lo)/2, h.max))
		}
	}
	return time.Duration(h.max)
}

func (h *latencyHist) mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}
