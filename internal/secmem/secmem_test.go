package secmem

import (
	"bytes"
	"testing"
)

func TestFromCopiesIntoLockedMemoryAndClearsTheSource(t *testing.T) {
	src := []byte("correct horse battery staple")
	want := bytes.Clone(src)
	b, err := From(src)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Fatalf("Bytes = %q", b.Bytes())
	}
	if !bytes.Equal(src, make([]byte, len(src))) {
		t.Fatalf("source not cleared: %q", src)
	}
	if !b.Locked() {
		// Root and most CI runners may lock a page; an unprivileged
		// process with RLIMIT_MEMLOCK=0 may not, which Locked reports.
		t.Log("buffer not locked (RLIMIT_MEMLOCK?)")
	}
	mem := b.Bytes()
	b.Destroy()
	if b.Len() != 0 || b.Bytes() != nil {
		t.Fatal("destroyed buffer still has content")
	}
	b.Destroy() // idempotent
	_ = mem     // the mapping is gone: touching mem would fault, which is the point
}

func TestNilAndOversizedBuffers(t *testing.T) {
	var b *Buffer
	b.Destroy()
	if b.Bytes() != nil || b.Len() != 0 || b.Locked() {
		t.Fatal("nil buffer not empty")
	}
	if _, err := New(MaxSize + 1); err == nil {
		t.Fatal("oversized buffer accepted")
	}
}
