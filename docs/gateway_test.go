package docs

import (
	"testing"
	"time"
)

// TestGatewayGuide runs every example of gateway.md against `make run`'s
// vault, from a directory holding its .custody-dev/, as the page assumes.
func TestGatewayGuide(t *testing.T) {
	dir := t.TempDir()
	v := startDevVault(t, dir)
	s := &session{dir: dir, subst: v.ports()}
	s.run(t, shellBlocks(t, "gateway.md"), 5*time.Minute)
}
