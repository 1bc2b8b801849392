// Package docs holds Custody's documentation. Its tests run the commands
// the documents show, as a reader would paste them, against real vaults:
// the fenced ```sh blocks of a page, in order, in one bash session, with
// the binaries built from this checkout on PATH.
//
// A block may be preceded by an HTML comment that tells the test how to
// treat it (the reader does not see it):
//
//	<!-- doctest: fails -->                    every command in it must fail
//	<!-- doctest: output=TEXT -->              the block's output contains TEXT
//	<!-- doctest: fails; output=TEXT -->       both
//	<!-- doctest: skip=REASON -->              not run (REASON is required)
//	<!-- doctest: compile-only -->             (```go) built, not run
//
// ```go blocks are whole programs: each is built in a module of its own that
// requires this one, as a relay developer's program would be, and run.
//
// Each test says which few strings it rewrites before running (the ports
// of a vault started on free ports instead of 8443/8444/9090, a directory
// for /etc/custody): those are the only differences from what a reader
// pastes.
package docs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// block is one fenced code block of a Markdown page.
type block struct {
	file        string
	line        int // line of the opening fence
	code        string
	fails       bool
	skip        string
	want        []string // output=... directives
	compileOnly bool
}

func (b block) where() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

var directiveRE = regexp.MustCompile(`^<!--\s*doctest:\s*(.*?)\s*-->$`)

// shellBlocks returns the ```sh blocks of a Markdown file, in order.
func shellBlocks(t *testing.T, path string) []block { return fenced(t, path, "sh") }

// fenced returns the blocks of language lang of a Markdown file, in order.
func fenced(t *testing.T, path, lang string) []block {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []block
	var pending *block // directives waiting for their block
	var cur *block
	var code strings.Builder
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur != nil && strings.TrimSpace(line) == "```":
			cur.code = code.String()
			out = append(out, *cur)
			cur, pending = nil, nil
		case cur != nil:
			code.WriteString(line + "\n")
		case strings.HasPrefix(line, "```"):
			if strings.TrimSpace(strings.TrimPrefix(line, "```")) != lang {
				// Another language: skip to its closing fence.
				for sc.Scan() {
					n++
					if strings.TrimSpace(sc.Text()) == "```" {
						break
					}
				}
				pending = nil
				continue
			}
			cur = &block{file: filepath.Base(path), line: n}
			if pending != nil {
				cur.fails, cur.skip, cur.want, cur.compileOnly = pending.fails, pending.skip, pending.want, pending.compileOnly
			}
			code.Reset()
		default:
			if m := directiveRE.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
				pending = &block{}
				for _, d := range strings.Split(m[1], ";") {
					name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
					switch name {
					case "fails":
						pending.fails = true
					case "skip":
						if val == "" {
							t.Fatalf("%s:%d: doctest skip needs a reason", path, n)
						}
						pending.skip = val
					case "output":
						pending.want = append(pending.want, val)
					case "compile-only":
						pending.compileOnly = true
					default:
						t.Fatalf("%s:%d: unknown doctest directive %q", path, n, d)
					}
				}
			} else if strings.TrimSpace(line) != "" && pending != nil && !strings.HasPrefix(strings.TrimSpace(line), "<!--") {
				t.Fatalf("%s:%d: a doctest directive must come right before its block", path, n)
			}
		}
	}
	if cur != nil {
		t.Fatalf("%s: unclosed block at line %d", path, cur.line)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no ```%s blocks", path, lang)
	}
	return out
}

// commands splits a block into commands: lines joined at trailing
// backslashes, comments and blank lines dropped. Used for "fails" blocks,
// where each command must fail on its own.
func commands(code string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(code, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		out = append(out, cur.String())
		cur.Reset()
	}
	return out
}

// session runs blocks of one page in one bash process.
type session struct {
	dir   string            // working directory (the "repository root" or empty dir the page assumes)
	env   []string          // extra environment
	subst map[string]string // exact strings rewritten in every block
	// stdin feeds every command that reads it: "y" answers to confirmations.
	stdin string
}

const markerFmt = "@@doctest block %d@@"

// run writes the blocks into one script, runs it, and checks each block:
// success (or, for "fails", the failure of each command) and its wanted
// output. It returns each block's output by index.
func (s *session) run(t *testing.T, blocks []block, timeout time.Duration) []string {
	t.Helper()
	var sb strings.Builder
	sb.WriteString("set -euo pipefail\n")
	for i, b := range blocks {
		code := b.code
		for from, to := range s.subst {
			code = strings.ReplaceAll(code, from, to)
		}
		fmt.Fprintf(&sb, "printf '\\n"+markerFmt+"\\n'\nprintf '\\n"+markerFmt+"\\n' >&2\n", i, i)
		switch {
		case b.skip != "":
			fmt.Fprintf(&sb, "# skipped: %s\n", b.skip)
		case b.fails:
			for _, c := range commands(code) {
				fmt.Fprintf(&sb, "if ( %s ); then echo 'doctest: %s: succeeded, but the page says it fails: %s' >&2; exit 97; fi\n",
					c, b.where(), strings.ReplaceAll(c, "'", "'\\''"))
			}
		default:
			fmt.Fprintf(&sb, "trap 'echo \"doctest: %s: a command failed (status $?)\" >&2' ERR\n", b.where())
			sb.WriteString(code)
			sb.WriteString("\ntrap - ERR\n")
		}
	}
	script := filepath.Join(t.TempDir(), "doc.sh")
	if err := os.WriteFile(script, []byte(sb.String()), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	// Its own process group: whatever the page starts in the background
	// (custodyd ... &) is stopped with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Env = append(cmd.Env, "PATH="+binDir+":"+os.Getenv("PATH"))
	cmd.Stdin = strings.NewReader(s.stdin)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Start()
	if err == nil {
		t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
		err = cmd.Wait()
	}
	perBlock := splitOutput(out.String(), len(blocks))
	if err != nil {
		last := 0
		for i := range perBlock {
			if strings.Contains(out.String(), fmt.Sprintf(markerFmt, i)) {
				last = i
			}
		}
		t.Fatalf("%s: the page's commands failed (%v) in the block at %s:\n%s\n--- that block's output ---\n%s",
			blocks[0].file, err, blocks[last].where(), blocks[last].code, perBlock[last])
	}
	for i, b := range blocks {
		for _, w := range b.want {
			if !strings.Contains(perBlock[i], w) {
				t.Errorf("%s: output lacks %q:\n%s", b.where(), w, perBlock[i])
			}
		}
	}
	return perBlock
}

func splitOutput(all string, n int) []string {
	out := make([]string, n)
	cur := -1
	for _, line := range strings.Split(all, "\n") {
		var i int
		if _, err := fmt.Sscanf(line, markerFmt, &i); err == nil && i >= 0 && i < n {
			cur = i
			continue
		}
		if cur >= 0 {
			out[cur] += line + "\n"
		}
	}
	return out
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// binDir holds custodyd, custodyctl and custody-hsmbench built from this
// checkout by TestMain, as `make build` builds them.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "custody-doctest-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", dir+"/", "../cmd/...")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the binaries: %v\n%s", err, out)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// devVault is `make run`'s vault (custodyd --dev --dev-dir .custody-dev),
// started in dir on free ports.
type devVault struct {
	grpc, http, gateway string
	proc                *exec.Cmd
	log                 *syncBuffer
}

var devAddrRE = regexp.MustCompile(`gRPC \(mTLS\): (\S+)\s+REST/JSON gateway \(mTLS\): https://(\S+)/v1/`)
var devHTTPRE = regexp.MustCompile(`metrics/health: http://(\S+)/metrics`)

func startDevVault(t *testing.T, dir string) *devVault {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "custodyd"), "--dev", "--dev-dir", ".custody-dev",
		"--dev-listen", "127.0.0.1:0", "--dev-http", "127.0.0.1:0", "--dev-gateway", "127.0.0.1:0")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF=")
	v := &devVault{proc: cmd, log: &syncBuffer{}}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = v.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	found := make(chan [3]string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var a [3]string
		for sc.Scan() {
			if m := devAddrRE.FindStringSubmatch(sc.Text()); m != nil {
				a[0], a[1] = m[1], m[2]
			}
			if m := devHTTPRE.FindStringSubmatch(sc.Text()); m != nil {
				a[2] = m[1]
				found <- a
			}
		}
	}()
	select {
	case a := <-found:
		v.grpc, v.gateway, v.http = a[0], a[1], a[2]
	case <-time.After(2 * time.Minute):
		t.Fatalf("custodyd --dev did not start:\n%s", v.log.String())
	}
	return v
}

// ports rewrites the dev vault's documented addresses to the real ones.
func (v *devVault) ports() map[string]string {
	_, gwPort, _ := strings.Cut(v.gateway, ":")
	return map[string]string{
		"127.0.0.1:8443": v.grpc,
		"localhost:8444": "localhost:" + gwPort,
		"127.0.0.1:8444": v.gateway,
		"127.0.0.1:9090": v.http,
	}
}

func yes(n int) string { return strings.Repeat("y\n", n) }
