//go:build linux || darwin || freebsd || netbsd || openbsd

package secmem

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func alloc(size int) ([]byte, bool, error) {
	page := unix.Getpagesize()
	n := (size + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return nil, false, fmt.Errorf("secmem: map %d bytes: %w", n, err)
	}
	// Best effort: a process without CAP_IPC_LOCK and with a small
	// RLIMIT_MEMLOCK keeps working, unlocked (Locked reports it).
	locked := unix.Mlock(mem) == nil
	dontDump(mem)
	return mem, locked, nil
}

func release(mem []byte, locked bool) {
	if locked {
		_ = unix.Munlock(mem)
	}
	_ = unix.Munmap(mem)
}
