package gateway

import (
	"io"
	"strconv"
	"sync"
	"time"
)

// quietWriter passes at most burst lines, refilled at one a second, to w
// and drops the rest, noting how many it dropped in the next line it
// passes. net/http logs every failed TLS handshake and every malformed
// request on its ErrorLog: under a flood of the gateway port that is a
// second flood, of the log. The connections themselves are counted by
// custody_handshake_failures_total.
type quietWriter struct {
	w     io.Writer
	burst float64

	mu      sync.Mutex
	tokens  float64
	last    time.Time
	dropped int
}

func newQuietWriter(w io.Writer, burst int) *quietWriter {
	return &quietWriter{w: w, burst: float64(burst), tokens: float64(burst)}
}

func (q *quietWriter) Write(p []byte) (int, error) {
	q.mu.Lock()
	now := time.Now()
	if !q.last.IsZero() {
		q.tokens = min(q.burst, q.tokens+now.Sub(q.last).Seconds())
	}
	q.last = now
	if q.tokens < 1 {
		q.dropped++
		q.mu.Unlock()
		return len(p), nil
	}
	q.tokens--
	dropped := q.dropped
	q.dropped = 0
	q.mu.Unlock()
	if dropped > 0 {
		line := append([]byte(nil), p...)
		if n := len(line); n > 0 && line[n-1] == '\n' {
			line = line[:n-1]
		}
		line = append(line, []byte(" (and "+strconv.Itoa(dropped)+" similar lines dropped)\n")...)
		_, err := q.w.Write(line)
		return len(p), err
	}
	_, err := q.w.Write(p)
	return len(p), err
}
