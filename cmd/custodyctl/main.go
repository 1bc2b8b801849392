// Command custodyctl is the command-line client of custodyd: key management,
// cryptographic operations (including envelope encryption of files of any
// size) and status, all over gRPC with mutual TLS 1.3.
//
// It is a client only: it imports the generated API and nothing of the
// server or the HSM layer, so no key material beyond a per-file data key
// (zeroed after use) ever exists in this process. Every failure is one line
// on stderr with exit status 1, or 2 for usage errors: "custodyctl: <grpc
// code>: <message>" when custodyd (or the connection to it) refused the
// call, and "custodyctl: <message>" for a mistake found here, such as a
// missing file or a bad flag.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func main() {
	quietGRPCLog()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// cliError is a failure found by custodyctl itself, with the gRPC code it is
// reported under and whether it is a usage error (exit 2).
type cliError struct {
	code  codes.Code
	usage bool
	err   error
}

func (e *cliError) Error() string { return e.err.Error() }
func (e *cliError) Unwrap() error { return e.err }

// usageErrorf reports a bad invocation: exit status 2.
func usageErrorf(format string, args ...any) error {
	return &cliError{code: codes.InvalidArgument, usage: true, err: fmt.Errorf(format, args...)}
}

// remoteError reports what custodyd answered, found only after looking at
// its answers (a health status, every call of a benchmark refused): it is
// reported with its gRPC code like any refusal.
func remoteError(code codes.Code, err error) error {
	return status.Error(code, err.Error())
}

// localError reports a failure outside any RPC under the given code.
func localError(code codes.Code, err error) error {
	return &cliError{code: code, err: err}
}

// run executes one custodyctl invocation and returns its exit status. It
// reads environment variables for flag defaults and is otherwise driven only
// by its arguments, so tests can call it in-process.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	defer app.close()
	root := app.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	d := describe(err)
	if d.local {
		fmt.Fprintf(stderr, "custodyctl: %s\n", oneLine(d.msg))
	} else {
		fmt.Fprintf(stderr, "custodyctl: %s: %s\n", d.code, oneLine(d.msg))
	}
	if d.usage {
		return exitUsage
	}
	return exitError
}

// failure is how an error is reported: local failures (found by custodyctl
// itself) are not given a gRPC code name, which would suggest custodyd
// said so.
type failure struct {
	code         codes.Code
	msg          string
	usage, local bool
}

// describe turns any error into what is reported.
func describe(err error) failure {
	var ce *cliError
	if errors.As(err, &ce) {
		return failure{code: ce.code, msg: ce.err.Error(), usage: ce.usage, local: true}
	}
	if s, ok := status.FromError(err); ok {
		return failure{code: s.Code(), msg: s.Message()}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return failure{code: codes.DeadlineExceeded, msg: err.Error()}
	}
	if errors.Is(err, context.Canceled) {
		return failure{code: codes.Canceled, msg: err.Error()}
	}
	// Anything else that escapes cobra is a flag or argument parse failure.
	return failure{code: codes.InvalidArgument, msg: err.Error(), usage: true, local: true}
}

// oneLine keeps the error report on a single line whatever the server sent.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// groupCommand is a command that only holds subcommands: invoked alone or
// with an unknown subcommand it is a usage error, not help with status 0.
func groupCommand(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
					return usageErrorf("unknown command %q for %q; did you mean %s?", args[0], cmd.CommandPath(), strings.Join(s, " or "))
				}
				return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return usageErrorf("%s needs a subcommand; see %s --help", cmd.CommandPath(), cmd.CommandPath())
		},
	}
	c.SuggestionsMinimumDistance = 2 // cobra's default, which SuggestionsFor does not apply itself
	c.AddCommand(subs...)
	return c
}

// exactArgs is cobra.ExactArgs reporting a usage error.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("%s takes %s (got %d arguments)", cmd.CommandPath(), names, len(args))
		}
		return nil
	}
}

// suggestFlag returns the flag (as --name) closest to the unknown one in
// err, if one is close enough to be a typo; "" otherwise.
func suggestFlag(cmd *cobra.Command, err error) string {
	name, ok := strings.CutPrefix(err.Error(), "unknown flag: --")
	if !ok {
		return ""
	}
	name, _, _ = strings.Cut(name, "=")
	best, bestD := "", 3 // at most 2 edits away
	visit := func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		if d := editDistance(name, f.Name); d < bestD || (d == bestD && f.Name < best) {
			best, bestD = f.Name, d
		}
	}
	cmd.Flags().VisitAll(visit)
	cmd.InheritedFlags().VisitAll(visit)
	if best == "" {
		return ""
	}
	return "--" + best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
