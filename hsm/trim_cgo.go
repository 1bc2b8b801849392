//go:build linux && cgo

package hsm

/*
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

// custody_malloc_trim calls the C library's malloc_trim(0) if it has one
// (glibc does; looked up at run time so that other C libraries still link).
static int custody_malloc_trim(void) {
	int (*trim)(size_t) = (int (*)(size_t))dlsym(RTLD_DEFAULT, "malloc_trim");
	if (trim == NULL) {
		return -1;
	}
	return trim(0);
}
*/
import "C"

// releaseFreedMemory asks the C allocator to hand the pages it holds free
// back to the operating system (glibc's malloc_trim). After C_Finalize has
// freed a module's leaked objects, glibc would otherwise keep those pages
// in whichever of its per-thread arenas freed them, and resident memory
// would creep up by a fraction of a megabyte per recycle. It reports
// whether the C library offers it.
func releaseFreedMemory() bool { return C.custody_malloc_trim() >= 0 }
