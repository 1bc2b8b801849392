//go:build linux

package secmem

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHardenMakesTheProcessNonDumpableWithoutCores runs Harden in a child
// (it changes the whole process) and checks the child's own view.
func TestHardenMakesTheProcessNonDumpableWithoutCores(t *testing.T) {
	if os.Getenv("CUSTODY_HARDEN_CHILD") == "1" {
		h := Harden(true)
		d, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		var core unix.Rlimit
		_ = unix.Getrlimit(unix.RLIMIT_CORE, &core)
		if d != 0 || core.Cur != 0 || !h.NotDumpable || !h.NoCore {
			os.Stdout.WriteString("FAIL dumpable or core\n")
			os.Exit(1)
		}
		status, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "VmLck:") {
				os.Stdout.WriteString(l + "\n")
			}
		}
		if h.LockedAll {
			os.Stdout.WriteString("locked all\n")
		}
		for _, p := range h.Problems {
			os.Stdout.WriteString("problem: " + p + "\n")
		}
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestHardenMakesTheProcessNonDumpableWithoutCores$")
	cmd.Env = append(os.Environ(), "CUSTODY_HARDEN_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	// mlockall is granted to root (CAP_IPC_LOCK) or with an unlimited
	// RLIMIT_MEMLOCK; otherwise it is reported, not attempted.
	if !strings.Contains(string(out), "locked all") && !strings.Contains(string(out), "problem: mlockall") {
		t.Fatalf("mlockall neither done nor reported:\n%s", out)
	}
	t.Logf("child: %s", out)
}
