package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// purposes maps the CLI's purpose names to the API's.
var purposes = map[string]custodyv1.KeyPurpose{
	"encrypt":           custodyv1.KeyPurpose_ENCRYPT_AES256_GCM,
	"mac":               custodyv1.KeyPurpose_MAC_HMAC_SHA256,
	"sign-ecdsa-p256":   custodyv1.KeyPurpose_SIGN_ECDSA_P256,
	"sign-ecdsa-p384":   custodyv1.KeyPurpose_SIGN_ECDSA_P384,
	"sign-ed25519":      custodyv1.KeyPurpose_SIGN_ED25519,
	"sign-rsa-pss-3072": custodyv1.KeyPurpose_SIGN_RSA_PSS_3072,
}

func purposeNames() string {
	names := make([]string, 0, len(purposes))
	for n := range purposes {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, "|")
}

// parseVersion parses a key version argument (>= 1).
func parseVersion(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v == 0 {
		return 0, usageErrorf("version must be a whole number >= 1, not %q", s)
	}
	return uint32(v), nil
}

func (a *app) keyCommand() *cobra.Command {
	return groupCommand("key", "Manage keys and key versions",
		a.keyCreateCommand(),
		a.keySimpleCommand("get NAME", "Show a key and its versions", func(ctx context.Context, c custodyv1.KeyServiceClient, name string) (*custodyv1.Key, error) {
			return c.GetKey(ctx, &custodyv1.GetKeyRequest{Name: name})
		}),
		a.keyListCommand(),
		a.keySimpleCommand("rotate NAME", "Create a new version and make it primary", func(ctx context.Context, c custodyv1.KeyServiceClient, name string) (*custodyv1.Key, error) {
			return c.RotateKey(ctx, &custodyv1.RotateKeyRequest{Name: name})
		}),
		a.keyVersionCommand("enable NAME VERSION", "Enable a disabled key version", custodyv1.KeyServiceClient.EnableKeyVersion),
		a.keyVersionCommand("disable NAME VERSION", "Disable a key version", custodyv1.KeyServiceClient.DisableKeyVersion),
		a.keyVersionCommand("cancel-destroy NAME VERSION", "Cancel a scheduled destruction (the version becomes disabled)", custodyv1.KeyServiceClient.CancelKeyDestruction),
		a.keyMinVersionCommand(),
		a.keyDestroyCommand(),
	)
}

// keyCall runs one KeyService call with the --timeout deadline and prints the key.
func (a *app) keyCall(cmd *cobra.Command, call func(ctx context.Context, c custodyv1.KeyServiceClient) (*custodyv1.Key, error)) error {
	c, err := a.keys()
	if err != nil {
		return err
	}
	ctx, cancel := a.callCtx(cmd.Context())
	defer cancel()
	k, err := call(ctx, c)
	if err != nil {
		return err
	}
	return a.emit(k, func(w io.Writer) { printKey(w, k) })
}

func (a *app) keySimpleCommand(use, short string, call func(context.Context, custodyv1.KeyServiceClient, string) (*custodyv1.Key, error)) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.keyCall(cmd, func(ctx context.Context, c custodyv1.KeyServiceClient) (*custodyv1.Key, error) {
				return call(ctx, c, args[0])
			})
		},
	}
}

type keyVersionRPC func(custodyv1.KeyServiceClient, context.Context, *custodyv1.KeyVersionRequest, ...grpc.CallOption) (*custodyv1.Key, error)

func (a *app) keyVersionCommand(use, short string, rpc keyVersionRPC) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Args: exactArgs(2, "NAME VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := parseVersion(args[1])
			if err != nil {
				return err
			}
			return a.keyCall(cmd, func(ctx context.Context, c custodyv1.KeyServiceClient) (*custodyv1.Key, error) {
				return rpc(c, ctx, &custodyv1.KeyVersionRequest{Name: args[0], Version: v})
			})
		},
	}
}

func (a *app) keyCreateCommand() *cobra.Command {
	var purpose, description string
	cmd := &cobra.Command{
		Use: "create NAME --purpose " + purposeNames(), Short: "Create a key (its first version is generated in the HSM)",
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, ok := purposes[purpose]
			if !ok {
				return usageErrorf("--purpose must be one of %s", purposeNames())
			}
			return a.keyCall(cmd, func(ctx context.Context, c custodyv1.KeyServiceClient) (*custodyv1.Key, error) {
				return c.CreateKey(ctx, &custodyv1.CreateKeyRequest{Name: args[0], Purpose: p, Description: description})
			})
		},
	}
	cmd.Flags().StringVar(&purpose, "purpose", "", "what the key is for: "+purposeNames()+" (required)")
	cmd.Flags().StringVar(&description, "description", "", "free text for humans")
	return cmd
}

func (a *app) keyListCommand() *cobra.Command {
	var pageSize int32
	var pageToken string
	cmd := &cobra.Command{
		Use: "list", Short: "List keys, one page at a time", Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pageSize < 0 {
				return usageErrorf("--page-size must be >= 0")
			}
			c, err := a.keys()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			resp, err := c.ListKeys(ctx, &custodyv1.ListKeysRequest{PageSize: pageSize, PageToken: pageToken})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tPURPOSE\tPRIMARY\tVERSIONS\tCREATED")
				for _, k := range resp.GetKeys() {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", k.GetName(), k.GetPurpose(), k.GetPrimaryVersion(), len(k.GetVersions()), formatTime(k.GetCreateTime()))
				}
				_ = tw.Flush()
				if t := resp.GetNextPageToken(); t != "" {
					fmt.Fprintf(w, "next page: --page-token %s\n", t)
				}
			})
		},
	}
	cmd.Flags().Int32Var(&pageSize, "page-size", 0, "keys per page; 0 for the server's default")
	cmd.Flags().StringVar(&pageToken, "page-token", "", "token printed by the previous page")
	return cmd
}

func (a *app) keyMinVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use: "min-version NAME VERSION", Short: "Refuse decryption with versions below VERSION",
		Args: exactArgs(2, "NAME VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := parseVersion(args[1])
			if err != nil {
				return err
			}
			return a.keyCall(cmd, func(ctx context.Context, c custodyv1.KeyServiceClient) (*custodyv1.Key, error) {
				return c.SetMinDecryptionVersion(ctx, &custodyv1.SetMinDecryptionVersionRequest{Name: args[0], Version: v})
			})
		},
	}
}

func (a *app) keyDestroyCommand() *cobra.Command {
	var after time.Duration
	cmd := &cobra.Command{
		Use: "destroy NAME VERSION [--after 168h]", Short: "Schedule a key version's destruction",
		Long: `Schedule destruction of one key version after a waiting period (default:
the server's). Until then the version is unusable and "key cancel-destroy"
restores it; afterwards everything encrypted under it is unrecoverable.`,
		Args: exactArgs(2, "NAME VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := parseVersion(args[1])
			if err != nil {
				return err
			}
			if after < 0 {
				return usageErrorf("--after must not be negative")
			}
			req := &custodyv1.ScheduleKeyDestructionRequest{Name: args[0], Version: v}
			if after > 0 {
				req.WaitingPeriod = durationpb.New(after)
			}
			return a.keyCall(cmd, func(ctx context.Context, c custodyv1.KeyServiceClient) (*custodyv1.Key, error) {
				return c.ScheduleKeyDestruction(ctx, req)
			})
		},
	}
	cmd.Flags().DurationVar(&after, "after", 0, "waiting period before destruction, e.g. 168h; 0 for the server's default")
	return cmd
}

func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// printKey writes a key and its versions for humans.
func printKey(w io.Writer, k *custodyv1.Key) {
	fmt.Fprintf(w, "name:                   %s\n", k.GetName())
	fmt.Fprintf(w, "purpose:                %s\n", k.GetPurpose())
	if d := k.GetDescription(); d != "" {
		fmt.Fprintf(w, "description:            %s\n", d)
	}
	fmt.Fprintf(w, "primary version:        %d\n", k.GetPrimaryVersion())
	fmt.Fprintf(w, "min decryption version: %d\n", k.GetMinDecryptionVersion())
	fmt.Fprintf(w, "created:                %s\n", formatTime(k.GetCreateTime()))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tCREATED\tDESTROY\tHSM ID\tHSM ATTRIBUTES")
	for _, v := range k.GetVersions() {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", v.GetVersion(), v.GetState(), formatTime(v.GetCreateTime()),
			formatTime(v.GetDestroyTime()), v.GetHsmKeyId(), formatAttrs(v.GetAttributes()))
	}
	_ = tw.Flush()
}

// formatAttrs summarises HSM attributes in the words the ceremony
// transcript uses (formatTranscriptAttrs), flagging anything unsafe loudly.
// Versions recorded before custodyd kept CKA_TOKEN, CKA_PRIVATE and
// CKA_MODIFIABLE say so rather than claim them.
func formatAttrs(at *custodyv1.HsmAttributes) string {
	if at == nil {
		return "-"
	}
	return formatTranscriptAttrs(TranscriptAttr{Token: at.GetToken(), Private: at.GetPrivate(), Sensitive: at.GetSensitive(),
		AlwaysSensitive: at.GetAlwaysSensitive(), Extractable: at.GetExtractable(), NeverExtractable: at.GetNeverExtractable(),
		Local: at.GetLocal(), Modifiable: at.GetModifiable(), Unverified: at.GetUnverified()})
}
