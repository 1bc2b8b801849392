package main

// What is in force: the grants, budgets (with their current spend) and
// disclosure orders of a governed vault, as auditors compare them with the
// ceremony transcript and the executed proposals.

import (
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

func (a *app) grantCommand() *cobra.Command {
	var identity, key string
	list := &cobra.Command{
		Use:   "list [--identity ID] [--key NAME]",
		Short: "List the grants in force: who may do what with which key",
		Long: `Lists the grants custodyd enforces now (after the ceremony: the ceremony's
grants plus executed add-grant proposals, minus removed ones), in id order.
DELIVERY says how a data key can leave for datakey/unwrap: "plaintext"
(allow_plaintext), "to N recipient keys" (key transport), or "-". PINNED KEY
is the SPKI SHA-256 the caller's certificate must carry ("-": any key with
the identity).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.governance(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.ListGrants(ctx, &custodyv1.ListGrantsRequest{Identity: identity, Key: key})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				if len(resp.GetGrants()) == 0 {
					fmt.Fprintln(w, "no grants")
					return
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tIDENTITY\tKEY\tOPERATIONS\tCONTEXT\tDELIVERY\tPINNED KEY")
				for _, g := range resp.GetGrants() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.GetId(), g.GetIdentity(), g.GetKey(),
						strings.Join(g.GetOperations(), ","), dash(formatMatch(g.GetContextMatch())), delivery(g), dash(g.GetSpkiSha256()))
				}
				_ = tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&identity, "identity", "", "only grants to this identity (URI SAN or hex SPKI SHA-256)")
	list.Flags().StringVar(&key, "key", "", "only grants on this key")
	return groupCommand("grant", "Show the grants in force", list)
}

// delivery says how a grant lets a data key leave custodyd.
func delivery(g *custodyv1.Grant) string {
	var parts []string
	if g.GetAllowPlaintext() {
		parts = append(parts, "plaintext")
	}
	if n := len(g.GetRecipientKeySha256()); n > 0 {
		fps := make([]string, n)
		for i, r := range g.GetRecipientKeySha256() {
			fps[i] = hex.EncodeToString(r)
			if len(fps[i]) > 16 {
				fps[i] = fps[i][:16] + "…"
			}
		}
		parts = append(parts, fmt.Sprintf("to %d recipient key(s) %s", n, strings.Join(fps, ",")))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "; ")
}

func (a *app) budgetCommand() *cobra.Command {
	var key string
	list := &cobra.Command{
		Use:   "list [--key NAME]",
		Short: "List the budgets in force with their current spend and freezes",
		Long: `Lists every budget (per identity on a key, and each key's shared budget,
shown as identity "*"), in key then identity order, with what is spent:
USED is the volume spent in the current window out of VOLUME, AVAILABLE the
units the token bucket holds now (out of BURST), RESETS when the window ends.
FROZEN identities are refused on that key until an unfreeze proposal
executes.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.governance(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.ListBudgets(ctx, &custodyv1.ListBudgetsRequest{Key: key})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				if len(resp.GetBudgets()) == 0 {
					fmt.Fprintln(w, "no budgets")
					return
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY\tIDENTITY\tRATE/S\tBURST\tAVAILABLE\tUSED\tVOLUME\tWINDOW\tRESETS\tFROZEN")
				for _, b := range resp.GetBudgets() {
					who := b.GetIdentity()
					if who == "" {
						who = "* (shared)"
					}
					frozen := "no"
					if b.GetFrozen() {
						frozen = "FROZEN"
					}
					fmt.Fprintf(tw, "%s\t%s\t%g\t%d\t%.0f\t%d\t%d\t%s\t%s\t%s\n", b.GetKey(), who, b.GetRate(), b.GetBurst(),
						b.GetAvailable(), b.GetWindowUsed(), b.GetVolume(), formatWindow(b.GetWindow().AsDuration()),
						formatTime(b.GetWindowEnd()), frozen)
				}
				_ = tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&key, "key", "", "only budgets on this key")
	return groupCommand("budget", "Show the budgets in force and what is spent", list)
}

// formatWindow prints 24h0m0s as 24h and 90m as 1h30m.
func formatWindow(d time.Duration) string {
	s := d.String()
	s = strings.TrimSuffix(s, "0s")
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	if s == "" {
		return "0s"
	}
	return s
}

func (a *app) orderCommand() *cobra.Command {
	var all bool
	list := &cobra.Command{
		Use:   "list [--all]",
		Short: "List the disclosure orders in force (--all: also ended ones)",
		Long: `Lists executed disclosure orders by end time: the case reference, the one
key, the context match, the recipient identity, uses so far out of the
maximum, and the end. An order ends when its uses are spent or its end time
passes; ended orders are shown only with --all.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.governance(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.ListDisclosureOrders(ctx, &custodyv1.ListDisclosureOrdersRequest{IncludeEnded: all})
			if err != nil {
				return err
			}
			now := time.Now()
			return a.emit(resp, func(w io.Writer) {
				if len(resp.GetOrders()) == 0 {
					fmt.Fprintln(w, "no disclosure orders")
					return
				}
				orders := resp.GetOrders()
				sort.SliceStable(orders, func(i, j int) bool {
					return orders[i].GetNotAfter().AsTime().Before(orders[j].GetNotAfter().AsTime())
				})
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "CASE\tKEY\tCONTEXT\tRECIPIENT\tUSED\tNOT AFTER\tSTATE")
				for _, o := range orders {
					state := "in force"
					switch {
					case o.GetUsed() >= o.GetMaxUses():
						state = "ended (used up)"
					case !now.Before(o.GetNotAfter().AsTime()):
						state = "ended (expired)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", o.GetCaseRef(), o.GetKey(), formatMatch(o.GetContextMatch()),
						o.GetRecipient(), o.GetUsed(), o.GetMaxUses(), formatTime(o.GetNotAfter()), state)
				}
				_ = tw.Flush()
			})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "include orders that have ended")
	return groupCommand("order", "Show the disclosure orders in force", list)
}
