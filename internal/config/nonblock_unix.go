//go:build unix

package config

import "syscall"

const nonblock = syscall.O_NONBLOCK
