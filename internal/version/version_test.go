package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestStringNamesTheCommitFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "6e6835f1c0de0123456789abcdef0123456789ab"},
		{Key: "vcs.time", Value: "2026-12-01T10:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	got := fromBuildInfo(bi, "", "").String("custodyd")
	want := "custodyd (devel) commit 6e6835f1c0de0123456789abcdef0123456789ab (2026-12-01T10:00:00Z, modified) go1.26.8"
	if got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}

func TestLinkerValuesWinOverBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "aaaa"}, {Key: "vcs.modified", Value: "true"}}}
	got := fromBuildInfo(bi, "v1.2.3", "bbbb").String("custodyctl")
	if got != "custodyctl v1.2.3 commit bbbb go1.26.8" {
		t.Fatalf("got %q", got)
	}
}

func TestUnknownCommitIsSaidSo(t *testing.T) {
	got := fromBuildInfo(nil, "", "").String("custodyctl")
	if !strings.Contains(got, "commit unknown") || !strings.HasPrefix(got, "custodyctl (devel)") {
		t.Fatalf("got %q", got)
	}
}
