package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
)

// This file is the one place in custodyctl, besides officer keys, that
// loads a PKCS#11 module: a site checks its own HSM before production. It
// does so through package hsm (the probe and custody read-back custodyd
// itself runs), never by importing miekg/pkcs11 here.

func (a *app) hsmCommand() *cobra.Command {
	return groupCommand("hsm", "Check a PKCS#11 token directly, before custodyd uses it", a.hsmCheckCommand())
}

func (a *app) hsmCheckCommand() *cobra.Command {
	var uri, pinFile, pinEnv, profile, initArgs string
	cmd := &cobra.Command{
		Use:   "check --uri URI (--pin-file FILE | --pin-env VAR)",
		Short: "Probe a token's capabilities and custody read-back on scratch keys",
		Long: `Loads the PKCS#11 module named by --uri, logs in, runs the capability probe
custodyd runs at start (RFC 5649 key wrap mechanism, GCM IV form, OAEP hash,
HMAC key type, refusal to let non-extractable keys out), then makes one
scratch key of every kind exactly as custody does, reads its attributes back
under the vendor profile, tries to get it out (read its value, make it
extractable or non-sensitive, copy it to an extractable key, wrap it out)
and destroys it. Prints the verdict; exits 1 when the token is not fit for
custody. Run it on the production token (an unused partition or slot is
best) before the key ceremony. The PIN comes from a file (mode 0600) or an
environment variable, never from a flag.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if uri == "" {
				return usageErrorf("--uri is required (an RFC 7512 pkcs11: URI with module-path)")
			}
			pin, err := readCheckPIN(pinFile, pinEnv)
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			// The report says everything the module's log would; keep stderr
			// for the one error line.
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			r, err := hsm.Check(ctx, hsm.Config{URI: uri, PIN: pin, Profile: profile, InitArgs: initArgs, MaxSessions: 4, Logger: quiet})
			clear(pin)
			if err != nil {
				return localError(codes.FailedPrecondition, err)
			}
			if err := a.emitValue(r, func(w io.Writer) { writeCheckReport(w, r) }); err != nil {
				return err
			}
			if !r.Fit {
				more := ""
				if n := len(r.Problems) - 1; n > 0 {
					more = fmt.Sprintf(" (and %d more problems in the report)", n)
				}
				return localError(codes.FailedPrecondition, fmt.Errorf("token %s is not fit to hold keys in custody: %s%s", r.Token, r.Problems[0], more))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&uri, "uri", "", `token: "pkcs11:token=LABEL?module-path=/path/lib.so"`)
	f.StringVar(&pinFile, "pin-file", "", "file holding the user PIN (mode 0600; one trailing newline is ignored)")
	f.StringVar(&pinEnv, "pin-env", "", "environment variable holding the user PIN")
	f.StringVar(&profile, "profile", "", "vendor profile ("+strings.Join(hsm.ProfileNames(), ", ")+"); default: detected")
	f.StringVar(&initArgs, "init-args", "", "C_Initialize pReserved string, for modules that need one (NSS softokn: configdir=...)")
	return cmd
}

// readCheckPIN reads the PIN from exactly one of a private file or an
// environment variable.
func readCheckPIN(file, env string) ([]byte, error) {
	switch {
	case (file == "") == (env == ""):
		return nil, usageErrorf("give the PIN with exactly one of --pin-file FILE and --pin-env VAR")
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok || v == "" {
			return nil, usageErrorf("environment variable %s (the token PIN) is not set", env)
		}
		return []byte(v), nil
	}
	st, err := os.Stat(file)
	if err != nil {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("pin file: %w", err))
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("pin file %s is readable by group or others (mode %#o); chmod 600 it", file, st.Mode().Perm()))
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("pin file: %w", err))
	}
	b = bytes.TrimSuffix(bytes.TrimSuffix(b, []byte("\n")), []byte("\r"))
	if len(b) == 0 {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("pin file %s is empty", file))
	}
	return b, nil
}

func writeCheckReport(w io.Writer, r *hsm.CheckReport) {
	verdict := "FIT to hold keys in custody"
	if !r.Fit {
		verdict = "NOT FIT to hold keys in custody"
	}
	fmt.Fprintf(w, "token:    %s (module %s)\nprofile:  %s (%s)\nverdict:  %s\n\n", r.Token, r.Module, r.Profile, r.Vendor, verdict)
	writeHSMStatus(w, capsStatus(r))
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCRATCH KEY\tMADE\tUNVERIFIED\tREFUSED\tALLOWED\tDESTROYED")
	for _, k := range r.Keys {
		if !k.Supported {
			fmt.Fprintf(tw, "%s\tno\t-\t-\t(%s)\t-\n", k.Kind, k.Error)
			continue
		}
		if k.Error != "" {
			fmt.Fprintf(tw, "%s\tREFUSED\t-\t-\t(%s)\t-\n", k.Kind, k.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\tyes\t%s\t%d of %d attempts\t%s\t%s\n", k.Kind, dash(strings.Join(k.Unverified, ",")),
			len(k.Refused), len(k.Refused)+len(k.Allowed), dash(strings.Join(k.Allowed, "; ")), yesNo(k.Destroyed))
	}
	_ = tw.Flush()
	for _, s := range []struct {
		title string
		items []string
	}{
		{"unverified (keys made here record them)", r.Unverified},
		{"disabled (only the features needing them are refused)", r.Disabled},
		{"problems", r.Problems},
	} {
		if len(s.items) > 0 {
			fmt.Fprintf(w, "\n%s:\n  %s\n", s.title, strings.Join(s.items, "\n  "))
		}
	}
}

// capsStatus renders the probe's decisions like custodyctl status does.
func capsStatus(r *hsm.CheckReport) *custodyv1.HsmStatus {
	c := r.Capabilities
	out := &custodyv1.HsmStatus{State: "checked", Profile: c.Profile, Vendor: r.Vendor, Generation: c.Generation, MissingMechanisms: c.Missing}
	for _, cp := range c.List() {
		pc := &custodyv1.HsmCapability{Name: cp.Name, Ok: cp.OK, Mode: cp.Mode, Verified: cp.Verified, Detail: cp.Detail}
		if cp.Mechanism.Code != 0 {
			pc.Mechanism, pc.MechanismCode = cp.Mechanism.Name, uint64(cp.Mechanism.Code)
		}
		out.Capabilities = append(out.Capabilities, pc)
	}
	return out
}
