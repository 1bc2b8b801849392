//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package secmem

// On systems without mmap/mlock the secret lives on the Go heap; it is
// still zeroed by Destroy.
func alloc(size int) ([]byte, bool, error) { return make([]byte, size), false, nil }

func release([]byte, bool) {}
