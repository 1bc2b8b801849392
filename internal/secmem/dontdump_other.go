//go:build !linux

package secmem

func dontDump([]byte) {}
