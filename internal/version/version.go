// Package version says which build of Custody is running: the module
// version and the commit it was built from, as the Go toolchain stamps
// them into the binary (debug.ReadBuildInfo, vcs.revision), or as a
// release build sets them with -ldflags. It is pure and has no
// dependencies, so the CLI may import it.
package version

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Commit and Version may be set at link time when the build has no VCS
// information (a source tarball, a container build without .git):
//
//	go build -ldflags "-X github.com/custodyhq/custody/internal/version.Commit=$(git rev-parse HEAD)" ./cmd/...
var (
	Commit  string
	Version string
)

// Info is what a binary knows about its build.
type Info struct {
	Version  string // module version, "(devel)" for a build from a checkout
	Commit   string // full commit hash; "" when unknown
	Time     string // commit time (RFC 3339); "" when unknown
	Modified bool   // the working tree had uncommitted changes
	Go       string // Go toolchain version
}

// Read returns this binary's build information.
func Read() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(bi, Version, Commit)
}

func fromBuildInfo(bi *debug.BuildInfo, version, commit string) Info {
	var in Info
	if bi != nil {
		in.Version, in.Go = bi.Main.Version, bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Commit = s.Value
			case "vcs.time":
				in.Time = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if version != "" {
		in.Version = version
	}
	if commit != "" {
		in.Commit, in.Time, in.Modified = commit, "", false
	}
	if in.Version == "" {
		in.Version = "(devel)"
	}
	return in
}

// String is the one line a binary prints for --version, e.g.
// "custodyctl (devel) commit 6e6835f1c0de (2026-12-01T10:00:00Z, modified) go1.26.8".
func (in Info) String(program string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", program, in.Version)
	if in.Commit == "" {
		b.WriteString(" commit unknown")
	} else {
		fmt.Fprintf(&b, " commit %s", in.Commit)
		var notes []string
		if in.Time != "" {
			notes = append(notes, in.Time)
		}
		if in.Modified {
			notes = append(notes, "modified")
		}
		if len(notes) > 0 {
			fmt.Fprintf(&b, " (%s)", strings.Join(notes, ", "))
		}
	}
	if in.Go != "" {
		fmt.Fprintf(&b, " %s", in.Go)
	}
	return b.String()
}
