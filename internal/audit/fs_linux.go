//go:build linux

package audit

import (
	"errors"
	"os"
	"syscall"
)

// preallocate allocates n bytes of f from off (fallocate, mode 0), so that
// the file's size already covers them: a later write inside that range
// changes no size, and its flush needs no inode size update.
func preallocate(f *os.File, off, n int64) error {
	return control(f, "fallocate", func(fd int) error {
		return ignoringEINTR(func() error { return syscall.Fallocate(fd, 0, off, n) })
	})
}

// datasync flushes f's data and the metadata needed to read it back
// (fdatasync): what a record needs to be durable, without the timestamp
// update fsync also writes.
func datasync(f *os.File) error {
	return control(f, "fdatasync", func(fd int) error {
		return ignoringEINTR(func() error { return syscall.Fdatasync(fd) })
	})
}

func control(f *os.File, op string, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	if ferr != nil {
		return &os.PathError{Op: op, Path: f.Name(), Err: ferr}
	}
	return nil
}

func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// seekDataLinux is SEEK_DATA (lseek(2)); syscall has no name for it.
const seekDataLinux = 3

// nextData returns the offset of the first byte at or after off that lies
// in data rather than in a hole, and false when there is no data after off
// (ENXIO). Where holes are not reported, every offset is data.
func nextData(f *os.File, off int64) (int64, bool) {
	var next int64
	err := control(f, "lseek", func(fd int) error {
		var err error
		next, err = syscall.Seek(fd, off, seekDataLinux)
		return err
	})
	switch {
	case err == nil:
		return next, true
	case errors.Is(err, syscall.ENXIO):
		return 0, false
	default:
		return off, true // no hole reporting: read on
	}
}
