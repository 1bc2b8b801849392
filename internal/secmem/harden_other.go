//go:build !linux

package secmem

// Hardening is what Harden did to the process.
type Hardening struct {
	NotDumpable, NoCore, LockedAll bool
	Problems                       []string
}

// Harden is implemented for Linux only.
func Harden(bool) Hardening {
	return Hardening{Problems: []string{"process hardening (no dumps, no core, mlockall) is implemented for Linux only"}}
}
