package secmem

import "golang.org/x/sys/unix"

// dontDump keeps the pages out of core dumps even where core dumps are on.
func dontDump(mem []byte) { _ = unix.Madvise(mem, unix.MADV_DONTDUMP) }
