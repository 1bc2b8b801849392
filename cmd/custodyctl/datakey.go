package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// Stored data keys (DataKeyService): custodyd keeps a wrapped data key under
// an id for relays that keep no state. As under "crypto", --key names the
// vault key and the client key file is --tls-key.

func (a *app) storedKeyCommand() *cobra.Command {
	cmd := groupCommand("datakey", "Keep data keys in custodyd under ids, and fetch them one at a time",
		a.storedKeyStoreCommand(), a.storedKeyFetchCommand(), a.storedKeyListCommand(), a.storedKeyDeleteCommand())
	cmd.Long = `Stored data keys are kept wrapped under a vault key, bound to an encryption
context, under an id you choose (1-128 characters from A-Za-z0-9._:-). Ids
are not secret. Every fetch is authorised, budgeted and audited like an
unwrap. See docs/relay.md.`
	return cmd
}

// dataKeysCall opens the DataKeyService and a --timeout-bounded context.
func (a *app) dataKeysCall(ctx context.Context) (custodyv1.DataKeyServiceClient, context.Context, context.CancelFunc, error) {
	conn, err := a.connect()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := a.callCtx(ctx)
	return custodyv1.NewDataKeyServiceClient(conn), ctx, cancel, nil
}

func requireID(id string) error {
	if id == "" {
		return usageErrorf("--id is required")
	}
	return nil
}

func (a *app) storedKeyStoreCommand() *cobra.Command {
	var o keyOpts
	var id, wrapped string
	cmd := &cobra.Command{
		Use:   "store --key NAME --id ID [--context k=v,...] [--wrapped BASE64|@FILE]",
		Short: "Store a new data key (generated in the HSM) or an existing wrapped one under an id",
		Long: `Without --wrapped, custodyd generates a data key inside the HSM and stores it
wrapped; it is never shown. With --wrapped, the wrapped key printed by
"crypto datakey" (same --key and --context) is verified and stored.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := o.check()
			if err != nil {
				return err
			}
			if err := requireID(id); err != nil {
				return err
			}
			req := &custodyv1.StoreDataKeyRequest{KeyName: o.key, Id: id, Context: ec,
				Source: &custodyv1.StoreDataKeyRequest_Generate{Generate: true}}
			if wrapped != "" {
				wk, err := a.bytesArg("wrapped", wrapped)
				if err != nil {
					return err
				}
				req.Source = &custodyv1.StoreDataKeyRequest_WrappedKey{WrappedKey: wk}
			}
			c, ctx, cancel, err := a.dataKeysCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.StoreDataKey(ctx, req)
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				printFields(w, "id", resp.GetId(), "key_version", fmt.Sprint(resp.GetKeyVersion()))
			})
		},
	}
	o.register(cmd, true)
	cmd.Flags().StringVar(&id, "id", "", "id to store the data key under (required)")
	cmd.Flags().StringVar(&wrapped, "wrapped", "", "keep this wrapped key (base64 or @FILE) instead of generating one")
	return cmd
}

func (a *app) storedKeyFetchCommand() *cobra.Command {
	var o keyOpts
	var id, recipient string
	cmd := &cobra.Command{
		Use:   "fetch --key NAME --id ID [--context k=v,...] [--recipient PUBKEY]",
		Short: "Fetch one stored data key, in plaintext (if granted) or wrapped to a recipient key",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := o.check()
			if err != nil {
				return err
			}
			if err := requireID(id); err != nil {
				return err
			}
			rcpt, err := a.readRecipient(recipient)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.dataKeysCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.FetchDataKey(ctx, &custodyv1.FetchDataKeyRequest{KeyName: o.key, Id: id, Context: ec, RecipientPublicKey: rcpt})
			if err != nil {
				return err
			}
			defer clear(resp.Plaintext)
			return a.emit(resp, func(w io.Writer) {
				printFields(w, "key_version", fmt.Sprint(resp.GetKeyVersion()), "plaintext", b64(resp.GetPlaintext()),
					"recipient_wrapped_key", b64(resp.GetRecipientWrappedKey()), "recipient_wrapping", resp.GetRecipientWrapping())
			})
		},
	}
	o.register(cmd, true)
	cmd.Flags().StringVar(&id, "id", "", "id the data key was stored under (required)")
	cmd.Flags().StringVar(&recipient, "recipient", "", "RSA public key file (PEM or DER) to wrap the data key to")
	return cmd
}

func (a *app) storedKeyListCommand() *cobra.Command {
	var o keyOpts
	var pageSize int32
	var pageToken string
	var all bool
	cmd := &cobra.Command{
		Use:   "list --key NAME [--page-size N] [--page-token T | --all]",
		Short: "List the ids stored under a vault key (never any key material)",
		Long: `Prints one id per line, then "next_page_token: T" if more follow. With --all,
follows every page. With --output json, prints one JSON object per page.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := o.check(); err != nil {
				return err
			}
			if all && pageToken != "" {
				return usageErrorf("--all and --page-token exclude each other")
			}
			c, err := a.connect()
			if err != nil {
				return err
			}
			dk := custodyv1.NewDataKeyServiceClient(c)
			for {
				ctx, cancel := a.callCtx(cmd.Context())
				resp, err := dk.ListDataKeyIds(ctx, &custodyv1.ListDataKeyIdsRequest{KeyName: o.key, PageSize: pageSize, PageToken: pageToken})
				cancel()
				if err != nil {
					return err
				}
				last := !all || resp.GetNextPageToken() == ""
				if err := a.emit(resp, func(w io.Writer) {
					for _, id := range resp.GetIds() {
						fmt.Fprintln(w, id)
					}
					if last {
						printFields(w, "next_page_token", resp.GetNextPageToken())
					}
				}); err != nil {
					return err
				}
				if last {
					return nil
				}
				pageToken = resp.GetNextPageToken()
			}
		},
	}
	o.register(cmd, false)
	cmd.Flags().Int32Var(&pageSize, "page-size", 0, "ids per page, at most 1000 (0: the server's default, 100)")
	cmd.Flags().StringVar(&pageToken, "page-token", "", "next_page_token of the previous page")
	cmd.Flags().BoolVar(&all, "all", false, "follow every page")
	return cmd
}

func (a *app) storedKeyDeleteCommand() *cobra.Command {
	var o keyOpts
	var id string
	cmd := &cobra.Command{
		Use:   "delete --key NAME --id ID [--context k=v,...]",
		Short: "Forget a stored data key (data sealed with it can no longer be opened through custodyd)",
		Long: `Needs the same grant and the same --context as a fetch of the id. There is no
undo: keep a wrapped copy ("crypto datakey") if the data must stay readable.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := o.check()
			if err != nil {
				return err
			}
			if err := requireID(id); err != nil {
				return err
			}
			c, ctx, cancel, err := a.dataKeysCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.DeleteDataKey(ctx, &custodyv1.DeleteDataKeyRequest{KeyName: o.key, Id: id, Context: ec})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) { printFields(w, "deleted", id) })
		},
	}
	o.register(cmd, true)
	cmd.Flags().StringVar(&id, "id", "", "id the data key was stored under (required)")
	return cmd
}
