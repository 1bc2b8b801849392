//go:build !linux

package main

import "os"

// isTerminal is false where custodyctl does not know how to ask: progress
// is then never drawn.
func isTerminal(*os.File) bool { return false }
