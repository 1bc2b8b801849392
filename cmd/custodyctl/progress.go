package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progressMin is the smallest input for which crypto encrypt/decrypt draw
// progress: smaller files finish before a bar would be read.
const progressMin = 16 << 20

// progressEvery is how often the progress line is redrawn.
const progressEvery = 200 * time.Millisecond

// stderrIsTerminalForTests makes tests see stderr as a terminal.
var stderrIsTerminalForTests bool

// stderrIsTerminal reports whether progress may be drawn on a.stderr.
func (a *app) stderrIsTerminal() bool {
	if stderrIsTerminalForTests {
		return true
	}
	f, ok := a.stderr.(*os.File)
	return ok && isTerminal(f)
}

// progressFor wraps src, the --in file of verb ("encrypting"), with a
// progress line on stderr when that is a terminal and the file is large.
// done ends the line; it is a no-op when no progress is drawn.
func (a *app) progressFor(src io.Reader, in, verb string) (r io.Reader, done func()) {
	if in == "-" || a.noProgress || !a.stderrIsTerminal() {
		return src, func() {}
	}
	fi, err := os.Stat(in)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() < progressMin {
		return src, func() {}
	}
	p := &progress{r: src, w: a.stderr, total: fi.Size(), label: verb + " " + in, start: time.Now()}
	return p, p.finish
}

// progress counts bytes read through it and redraws one line.
type progress struct {
	r     io.Reader
	w     io.Writer
	total int64
	label string
	start time.Time

	mu    sync.Mutex
	n     int64
	drawn time.Time
	ended bool
}

func (p *progress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.mu.Lock()
	p.n += int64(n)
	if now := time.Now(); now.Sub(p.drawn) >= progressEvery {
		p.draw(now)
	}
	p.mu.Unlock()
	return n, err
}

// draw writes the line; called with p.mu held.
func (p *progress) draw(now time.Time) {
	p.drawn = now
	pct := 100 * float64(p.n) / float64(p.total)
	if pct > 100 {
		pct = 100
	}
	const width = 30
	fill := int(pct / 100 * width)
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = ' '
		if i < fill {
			bar[i] = '#'
		}
	}
	rate := ""
	if secs := now.Sub(p.start).Seconds(); secs > 0 {
		rate = fmt.Sprintf("  %s/s", mib(float64(p.n)/secs))
	}
	fmt.Fprintf(p.w, "\r%s [%s] %3.0f%% %s of %s%s ", p.label, bar, pct, mib(float64(p.n)), mib(float64(p.total)), rate)
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	p.ended = true
	p.draw(time.Now())
	fmt.Fprintln(p.w)
}

func mib(n float64) string { return fmt.Sprintf("%.1f MiB", n/(1<<20)) }
