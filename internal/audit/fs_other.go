//go:build !linux

package audit

import (
	"errors"
	"os"
)

// preallocate is not implemented here: segments grow as they are written.
func preallocate(f *os.File, off, n int64) error { return errors.ErrUnsupported }

// datasync flushes f (fsync: no portable fdatasync).
func datasync(f *os.File) error { return f.Sync() }

// nextData: every offset is data here (no hole reporting).
func nextData(f *os.File, off int64) (int64, bool) { return off, true }
