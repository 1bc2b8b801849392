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

// custody_arena_max calls glibc's mallopt(M_ARENA_MAX, n) if it exists.
static int custody_arena_max(int n) {
	int (*opt)(int, int) = (int (*)(int, int))dlsym(RTLD_DEFAULT, "mallopt");
	if (opt == NULL || dlsym(RTLD_DEFAULT, "malloc_trim") == NULL) {
		return -1; // not glibc: M_ARENA_MAX (-8) may mean something else
	}
	return opt(-8, n) == 1 ? 0 : -1;
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

// LimitMallocArenas caps the C allocator at n arenas (glibc's M_ARENA_MAX;
// its default is 8 per CPU). The only C code in custodyd is the PKCS#11
// module; SoftHSM runs one operation at a time per process anyway, while
// each extra arena keeps its own free pages, so under a module that
// allocates and frees a lot (SoftHSM, recycled) resident memory keeps
// creeping up as calls land on new threads and arenas. Call it once at
// start, before the module is loaded. It reports whether the C library
// took the setting.
func LimitMallocArenas(n int) bool { return n > 0 && C.custody_arena_max(C.int(n)) == 0 }
