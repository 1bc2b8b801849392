//go:build !(linux && cgo)

package hsm

// releaseFreedMemory is a no-op where malloc_trim is not available.
func releaseFreedMemory() bool { return false }

// LimitMallocArenas is a no-op where glibc's mallopt is not available.
func LimitMallocArenas(int) bool { return false }
