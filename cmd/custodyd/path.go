package main

import (
	"path/filepath"
	"strings"
)

// relPath shortens p relative to wd when p lies below it.
func relPath(wd, p string) (string, error) {
	r, err := filepath.Rel(wd, p)
	if err != nil || strings.HasPrefix(r, "..") {
		return p, err
	}
	return r, nil
}
