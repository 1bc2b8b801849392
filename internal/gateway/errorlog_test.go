package gateway

import (
	"bytes"
	"strings"
	"testing"
)

func TestQuietWriterDropsAFloodOfLinesAndSaysSo(t *testing.T) {
	var out bytes.Buffer
	q := newQuietWriter(&out, 3)
	for range 1000 {
		q.Write([]byte("http: TLS handshake error from 127.0.0.1:1: EOF\n"))
	}
	if n := strings.Count(out.String(), "\n"); n != 3 {
		t.Fatalf("%d lines passed, want the burst of 3:\n%s", n, out.String())
	}
	q.tokens = 1 // as if a second had passed
	q.Write([]byte("next\n"))
	if !strings.HasSuffix(out.String(), "next (and 997 similar lines dropped)\n") {
		t.Fatalf("drop count not reported: %q", out.String())
	}
}
