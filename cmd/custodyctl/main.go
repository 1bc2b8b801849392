// Command custodyctl is the command-line client of custodyd: key management,
// cryptographic operations (including envelope encryption of files of any
// size) and status, all over gRPC with mutual TLS 1.3.
//
// It is a client only: it imports the generated API and nothing of the
// server or the HSM layer, so no key material beyond a per-file data key
// (zeroed after use) ever exists in this process. Every failure is one line
// on stderr, "custodyctl: <grpc code>: <message>", with exit status 1, or 2
// for usage errors.
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
	code, msg, usage := describe(err)
	fmt.Fprintf(stderr, "custodyctl: %s: %s\n", code, oneLine(msg))
	if usage {
		return exitUsage
	}
	return exitError
}

// describe turns any error into the code, message and usage flag reported.
func describe(err error) (codes.Code, string, bool) {
	var ce *cliError
	if errors.As(err, &ce) {
		return ce.code, ce.err.Error(), ce.usage
	}
	if s, ok := status.FromError(err); ok {
		return s.Code(), s.Message(), false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return codes.DeadlineExceeded, err.Error(), false
	}
	if errors.Is(err, context.Canceled) {
		return codes.Canceled, err.Error(), false
	}
	// Anything else that escapes cobra is a flag or argument parse failure.
	return codes.InvalidArgument, err.Error(), true
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
				return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return usageErrorf("%s needs a subcommand; see %s --help", cmd.CommandPath(), cmd.CommandPath())
		},
	}
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
