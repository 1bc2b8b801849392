//go:build !unix

package audit

import (
	"os"
	"path/filepath"
)

// lockDir only creates dir/LOCK where advisory locks are not available.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
}
