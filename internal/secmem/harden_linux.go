package secmem

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Hardening is what Harden did to the process.
type Hardening struct {
	// NotDumpable: PR_SET_DUMPABLE is 0 — no core dumps, and only a
	// process with CAP_SYS_PTRACE may attach to or read this one's memory.
	NotDumpable bool
	// NoCore: RLIMIT_CORE is 0.
	NoCore bool
	// LockedAll: mlockall(MCL_CURRENT|MCL_FUTURE) succeeded, so no page of
	// the process is ever written to swap.
	LockedAll bool
	// Problems explain each measure that was refused, for a clear warning.
	Problems []string
}

// Harden keeps secrets in this process out of core dumps and swap:
// PR_SET_DUMPABLE=0, RLIMIT_CORE=0 and, when lockAll is set and the process
// may lock memory without limit (RLIMIT_MEMLOCK unlimited or CAP_IPC_LOCK),
// mlockall. mlockall with a finite limit would make later allocations fail
// once the limit is reached, so it is not attempted then; Buffers are still
// locked one by one. Call it once, early, from main.
func Harden(lockAll bool) Hardening {
	var h Hardening
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		h.Problems = append(h.Problems, fmt.Sprintf("PR_SET_DUMPABLE=0 refused: %v", err))
	} else {
		h.NotDumpable = true
	}
	// Only change the limit when it is not 0 already (LimitCORE=0 in the
	// systemd unit): a seccomp filter may deny setrlimit.
	var core unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &core); err == nil && core.Cur == 0 && core.Max == 0 {
		h.NoCore = true
	} else if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		h.Problems = append(h.Problems, fmt.Sprintf("RLIMIT_CORE=0 refused: %v", err))
	} else {
		h.NoCore = true
	}
	if !lockAll {
		return h
	}
	var lim unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim)
	if lim.Cur != unix.RLIM_INFINITY && !hasCapIPCLock() {
		h.Problems = append(h.Problems, fmt.Sprintf("mlockall not attempted: RLIMIT_MEMLOCK is %d KiB and the process lacks CAP_IPC_LOCK (set LimitMEMLOCK=infinity in the systemd unit); PINs and shares are still kept in locked pages", lim.Cur/1024))
		return h
	}
	// MCL_ONFAULT locks each page when it is first touched instead of
	// populating every mapping at once (thread stacks, allocator arenas),
	// which would multiply the resident size; a page that ever held data
	// is locked all the same. Kernels before 4.4 lack it.
	err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT)
	if errors.Is(err, unix.EINVAL) {
		err = unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE)
	}
	if err != nil {
		h.Problems = append(h.Problems, fmt.Sprintf("mlockall refused: %v; memory may be swapped", err))
	} else {
		h.LockedAll = true
	}
	return h
}

// hasCapIPCLock reads the effective capability set from /proc/self/status.
func hasCapIPCLock() bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_IPC_LOCK) != 0
		}
	}
	return false
}
