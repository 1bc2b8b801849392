package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/seal"
)

// algorithmNames maps API purposes to the algorithm names a create-key
// proposal carries (internal/keys' purpose names).
var algorithmNames = map[custodyv1.KeyPurpose]string{
	custodyv1.KeyPurpose_ENCRYPT_AES256_GCM: "encrypt-aes256-gcm",
	custodyv1.KeyPurpose_MAC_HMAC_SHA256:    "mac-hmac-sha256",
	custodyv1.KeyPurpose_SIGN_ECDSA_P256:    "sign-ecdsa-p256",
	custodyv1.KeyPurpose_SIGN_ECDSA_P384:    "sign-ecdsa-p384",
	custodyv1.KeyPurpose_SIGN_ED25519:       "sign-ed25519",
	custodyv1.KeyPurpose_SIGN_RSA_PSS_3072:  "sign-rsa-pss-3072",
}

// parsePurpose accepts the CLI's purpose names (key create --purpose) and
// the algorithm names.
func parsePurpose(s string) (custodyv1.KeyPurpose, bool) {
	if p, ok := purposes[s]; ok {
		return p, true
	}
	for p, n := range algorithmNames {
		if n == s {
			return p, true
		}
	}
	return custodyv1.KeyPurpose_KEY_PURPOSE_UNSPECIFIED, false
}

// proposalStates maps --state names to the API's states.
var proposalStates = map[string]custodyv1.ProposalState{
	"pending":     custodyv1.ProposalState_PROPOSAL_PENDING,
	"time-locked": custodyv1.ProposalState_PROPOSAL_TIME_LOCKED,
	"ready":       custodyv1.ProposalState_PROPOSAL_READY,
	"executed":    custodyv1.ProposalState_PROPOSAL_EXECUTED,
	"vetoed":      custodyv1.ProposalState_PROPOSAL_VETOED,
	"expired":     custodyv1.ProposalState_PROPOSAL_EXPIRED,
	"failed":      custodyv1.ProposalState_PROPOSAL_FAILED,
}

func (a *app) governance(ctx context.Context) (custodyv1.GovernanceServiceClient, context.Context, context.CancelFunc, error) {
	conn, err := a.connect()
	if err != nil {
		return nil, nil, nil, err
	}
	cctx, cancel := a.callCtx(ctx)
	return custodyv1.NewGovernanceServiceClient(conn), cctx, cancel, nil
}

func (a *app) proposalCommand() *cobra.Command {
	return groupCommand("proposal", "Propose governance changes; approve or veto them as an officer",
		a.proposalCreateCommand(), a.proposalShowCommand(), a.proposalListCommand(),
		a.proposalDecideCommand(false), a.proposalDecideCommand(true), a.proposalSignCommand())
}

// createOpts are the flags every "proposal create" kind shares.
type createOpts struct {
	ttl    time.Duration
	dryRun bool
	out    string
	vault  string
}

func (a *app) proposalCreateCommand() *cobra.Command {
	var o createOpts
	kind := func(use, short string, args cobra.PositionalArgs, flags func(*cobra.Command), build func([]string) (quorum.Payload, error)) *cobra.Command {
		c := &cobra.Command{
			Use:   use,
			Short: short,
			Args:  args,
			RunE: func(cmd *cobra.Command, args []string) error {
				pl, err := build(args)
				if err != nil {
					return err
				}
				return a.submitProposal(cmd, o, pl)
			},
		}
		if flags != nil {
			flags(c)
		}
		return c
	}
	var purpose string
	var version int
	var grant struct {
		id, identity string
		ops, match   []string
		recipients   []string
		plaintext    bool
		spki         string
	}
	var trustConfig string
	var budget struct {
		identity string
		rate     float64
		burst    int
		volume   int64
		window   time.Duration
	}
	var unfreezeID, officerPub, rekeyReason string
	var rekeyKeys []string
	var order struct {
		caseRef, recipient, notAfter string
		match                        []string
		maxUses                      int
	}

	create := groupCommand("create", "Build a proposal, show exactly what it will do, and submit it",
		kind("create-key NAME --purpose P", "Create a key in the HSM", exactArgs(1, "NAME"),
			func(c *cobra.Command) {
				c.Flags().StringVar(&purpose, "purpose", "", "key purpose: "+purposeNames())
			},
			func(args []string) (quorum.Payload, error) {
				p, ok := parsePurpose(purpose)
				if !ok {
					return nil, usageErrorf("--purpose must be one of %s, not %q", purposeNames(), purpose)
				}
				return quorum.CreateKey{Name: args[0], Algorithm: algorithmNames[p]}, nil
			}),
		kind("destroy-key NAME [--version N]", "Schedule destruction of one version (or all versions) of a key", exactArgs(1, "NAME"),
			func(c *cobra.Command) {
				c.Flags().IntVar(&version, "version", 0, "version to destroy; 0 destroys every version")
			},
			func(args []string) (quorum.Payload, error) {
				return quorum.DestroyKey{Name: args[0], Version: version}, nil
			}),
		kind("rotate-key NAME", "Make a new primary version of a key", exactArgs(1, "NAME"), nil,
			func(args []string) (quorum.Payload, error) { return quorum.RotateKey{Name: args[0]}, nil }),
		kind("enable-version NAME VERSION", "Re-enable a disabled key version (widens access)", exactArgs(2, "NAME VERSION"), nil,
			func(args []string) (quorum.Payload, error) {
				v, err := parseVersion(args[1])
				return quorum.EnableVersion{Name: args[0], Version: int(v)}, err
			}),
		kind("disable-version NAME VERSION", "Disable a key version", exactArgs(2, "NAME VERSION"), nil,
			func(args []string) (quorum.Payload, error) {
				v, err := parseVersion(args[1])
				return quorum.DisableVersion{Name: args[0], Version: int(v)}, err
			}),
		kind("add-grant KEY --identity ID --ops OP,...", "Grant an identity key operations on one key (widens access)", exactArgs(1, "KEY"),
			func(c *cobra.Command) {
				f := c.Flags()
				f.StringVar(&grant.id, "id", "", "grant id; default a random g-… id")
				f.StringVar(&grant.identity, "identity", "", "identity: hex SHA-256 of the client certificate's public key, or its URI SAN")
				f.StringSliceVar(&grant.ops, "ops", nil, "operations: encrypt,decrypt,datakey,unwrap,rewrap,sign,verify,mac,verify-mac,pubkey")
				f.StringSliceVar(&grant.match, "context", nil, "require encryption context pairs k=v (repeatable or comma-separated)")
				f.StringSliceVar(&grant.recipients, "recipient-key", nil, "PEM public key file a data key may be wrapped to (repeatable)")
				f.BoolVar(&grant.plaintext, "allow-plaintext", false, "let datakey/unwrap return plaintext data keys")
				f.StringVar(&grant.spki, "spki", "", "pin the grant to the relay's key too: hex SHA-256 of its SubjectPublicKeyInfo, or its certificate or public key (PEM file); recommended")
			},
			func(args []string) (quorum.Payload, error) {
				g := policy.Grant{ID: grant.id, Identity: grant.identity, Key: args[0], AllowPlaintext: grant.plaintext}
				if g.ID == "" {
					g.ID = randomID("g-")
				}
				if grant.spki != "" {
					pin, err := spkiPin(grant.spki, func(p string) string { return p })
					if err != nil {
						return nil, usageErrorf("--spki: %v", err)
					}
					g.SPKI = pin
				}
				for _, op := range grant.ops {
					g.Operations = append(g.Operations, policy.Op(op))
				}
				m, err := parseMatch(grant.match)
				if err != nil {
					return nil, err
				}
				g.ContextMatch = m
				for _, f := range grant.recipients {
					d, err := spkiDigestFile(f)
					if err != nil {
						return nil, err
					}
					g.RecipientKeys = append(g.RecipientKeys, d)
				}
				if err := g.CheckUsable(); err != nil {
					return nil, usageErrorf("%s", strings.Replace(strings.TrimPrefix(err.Error(), policy.ErrUnusableGrant.Error()+": "),
						"add recipient_keys (the relay's RSA public key, for key transport) or allow_plaintext: true",
						"add --recipient-key FILE (the relay's RSA public key, for key transport) or --allow-plaintext", 1))
				}
				return quorum.AddGrant{Grant: g}, nil
			}),
		kind("remove-grant GRANT_ID", "Remove a grant", exactArgs(1, "GRANT_ID"), nil,
			func(args []string) (quorum.Payload, error) { return quorum.RemoveGrant{GrantID: args[0]}, nil }),
		kind("set-budget KEY --rate R --burst B --volume V --window D", "Set the budget of an identity on a key, or the key's shared budget", exactArgs(1, "KEY"),
			func(c *cobra.Command) {
				f := c.Flags()
				f.StringVar(&budget.identity, "identity", "", `identity; omit for the key's shared budget`)
				f.Float64Var(&budget.rate, "rate", 0, "refill rate, operations per second")
				f.IntVar(&budget.burst, "burst", 0, "bucket size, operations at once")
				f.Int64Var(&budget.volume, "volume", 0, "operations per window")
				f.DurationVar(&budget.window, "window", 0, "window length, e.g. 24h")
			},
			func(args []string) (quorum.Payload, error) {
				return quorum.SetBudget{Identity: budget.identity, Key: args[0], Budget: policy.Budget{
					Rate: budget.rate, Burst: budget.burst, Volume: budget.volume, Window: budget.window}}, nil
			}),
		kind("unfreeze KEY --identity ID", "Lift a budget freeze of an identity on a key (widens access)", exactArgs(1, "KEY"),
			func(c *cobra.Command) { c.Flags().StringVar(&unfreezeID, "identity", "", "frozen identity") },
			func(args []string) (quorum.Payload, error) {
				return quorum.Unfreeze{Identity: unfreezeID, Key: args[0]}, nil
			}),
		kind("add-officer NAME --pub FILE", "Add an officer (widens access)", exactArgs(1, "NAME"),
			func(c *cobra.Command) {
				c.Flags().StringVar(&officerPub, "pub", "", "the new officer's public key file (from officer keygen)")
			},
			func(args []string) (quorum.Payload, error) {
				if officerPub == "" {
					return nil, usageErrorf("--pub is required")
				}
				off, err := readOfficerPublicKey(officerPub)
				if err != nil {
					return nil, err
				}
				off.Name = args[0]
				return quorum.AddOfficer{Officer: off}, nil
			}),
		kind("remove-officer NAME", "Remove an officer", exactArgs(1, "NAME"), nil,
			func(args []string) (quorum.Payload, error) { return quorum.RemoveOfficer{Name: args[0]}, nil }),
		kind("set-threshold M", "Set M, the approvals a proposal needs (lowering it widens access)", exactArgs(1, "M"), nil,
			func(args []string) (quorum.Payload, error) {
				m, err := strconv.Atoi(args[0])
				if err != nil {
					return nil, usageErrorf("M must be a whole number, not %q", args[0])
				}
				return quorum.SetThreshold{Threshold: m}, nil
			}),
		kind("rekey-seal [--share-key OFFICER=FILE.pub ...]", "Replace the HSM PIN with a new one split among the current officers (sealed vaults)", exactArgs(0, "no arguments"),
			func(c *cobra.Command) {
				c.Flags().StringSliceVar(&rekeyKeys, "share-key", nil, "OFFICER=FILE.pub: the share key of an officer who has no share yet (added since) or replaces theirs (repeatable)")
				c.Flags().StringVar(&rekeyReason, "reason", "", "why, recorded in the proposal")
			},
			func([]string) (quorum.Payload, error) {
				pl := quorum.RekeySeal{Reason: rekeyReason}
				for _, kv := range rekeyKeys {
					name, file, ok := strings.Cut(kv, "=")
					if !ok || name == "" || file == "" {
						return nil, usageErrorf("--share-key wants OFFICER=FILE.pub, not %q", kv)
					}
					der, err := readSharePublicKey(file)
					if err != nil {
						return nil, err
					}
					pl.ShareKeys = append(pl.ShareKeys, quorum.OfficerShareKey{Officer: name, PublicKey: der})
				}
				return pl, nil
			}),
		kind("set-trust --from-config FILE", "Change what the key ceremony fixed: client CAs, identities' roles, time-lock, proposal ttl, freeze rule (widening changes wait out the time-lock)",
			exactArgs(0, "no arguments"),
			func(c *cobra.Command) {
				c.Flags().StringVar(&trustConfig, "from-config", "", "the custodyd configuration as it is to be (its tls.client_ca_file is read); install it once the proposal has executed")
			},
			func([]string) (quorum.Payload, error) {
				if trustConfig == "" {
					return nil, usageErrorf("--from-config FILE is required")
				}
				t, err := trustFromConfig(trustConfig)
				if err != nil {
					return nil, err
				}
				return quorum.SetTrust{Trust: t.Trust}, nil
			}),
		kind("disclosure-order KEY --case REF --context k=v,... --recipient ID --max-uses N --not-after T",
			"Issue a targeted disclosure order (widens access)", exactArgs(1, "KEY"),
			func(c *cobra.Command) {
				f := c.Flags()
				f.StringVar(&order.caseRef, "case", "", "case reference, recorded with every use")
				f.StringSliceVar(&order.match, "context", nil, "encryption context pairs k=v the ciphertexts must carry (required; no wildcards)")
				f.StringVar(&order.recipient, "recipient", "", "recipient identity")
				f.IntVar(&order.maxUses, "max-uses", 0, fmt.Sprintf("maximum uses, 1..%d", policy.MaxOrderUses))
				f.StringVar(&order.notAfter, "not-after", "", "end of the order: RFC 3339 time, or a duration from now such as 720h")
			},
			func(args []string) (quorum.Payload, error) {
				m, err := parseMatch(order.match)
				if err != nil {
					return nil, err
				}
				na, err := parseDeadline(order.notAfter, time.Now())
				if err != nil {
					return nil, err
				}
				return quorum.DisclosureOrder{Order: policy.Order{CaseRef: order.caseRef, Key: args[0], ContextMatch: m,
					Recipient: order.recipient, MaxUses: order.maxUses, NotAfter: na}}, nil
			}),
	)
	pf := create.PersistentFlags()
	pf.DurationVar(&o.ttl, "ttl", 72*time.Hour, "how long officers have to approve before the proposal expires")
	pf.BoolVar(&o.dryRun, "dry-run", false, "print the proposal and its digest; submit nothing")
	pf.StringVar(&o.out, "out", "", "also write the canonical proposal bytes to this file (for offline signing)")
	pf.StringVar(&o.vault, "vault", "", "the vault the proposal is for (its id, as `custodyctl status` shows it); default: ask the vault at --addr")
	return create
}

// submitProposal builds, shows and (unless --dry-run) submits a proposal.
func (a *app) submitProposal(cmd *cobra.Command, o createOpts, pl quorum.Payload) error {
	if o.ttl <= 0 {
		return usageErrorf("--ttl must be positive")
	}
	// custodyd files a proposal only in its caller's own name.
	proposer, err := certIdentity(a.certFile)
	if err != nil {
		return err
	}
	p, err := quorum.NewProposal(pl, proposer, time.Now(), o.ttl)
	if err != nil {
		return localError(codes.InvalidArgument, err)
	}
	// A proposal names its vault, so approvals of it never count on another
	// vault that shares the officers.
	if p.Vault = o.vault; p.Vault == "" {
		if p.Vault, err = a.vaultID(cmd.Context()); err != nil {
			return err
		}
	}
	canon, err := p.CanonicalBytes()
	if err != nil {
		return localError(codes.InvalidArgument, err)
	}
	d, _ := p.Digest()
	if o.out != "" {
		if err := createFile(o.out, canon, 0o644); err != nil {
			return err
		}
	}
	if o.dryRun {
		info := &custodyv1.ProposalInfo{Id: p.ID, Kind: string(p.Kind), Digest: d.String(), CanonicalProposal: canon,
			Summary: summarize(p), Widening: quorum.Widening(p.Payload, quorum.Current{}), Proposer: proposer}
		return a.emit(info, func(w io.Writer) {
			printProposal(w, p, info, true)
			fmt.Fprintln(w, "status:     not submitted (dry run)")
		})
	}
	c, ctx, cancel, err := a.governance(cmd.Context())
	if err != nil {
		return err
	}
	defer cancel()
	info, err := c.Propose(ctx, &custodyv1.ProposeRequest{CanonicalProposal: canon})
	if err != nil {
		return err
	}
	if info.GetDigest() != d.String() {
		return localError(codes.DataLoss, fmt.Errorf("server reports digest %s for proposal %s, computed %s locally", info.GetDigest(), p.ID, d))
	}
	return a.emit(info, func(w io.Writer) { printProposal(w, p, info, false) })
}

// fetchVerified gets a proposal and recomputes its digest from its canonical
// bytes locally: what is shown and signed never depends on the server's word.
func fetchVerified(ctx context.Context, c custodyv1.GovernanceServiceClient, id string) (quorum.Proposal, quorum.Digest, *custodyv1.ProposalInfo, error) {
	info, err := c.GetProposal(ctx, &custodyv1.GetProposalRequest{Id: id})
	if err != nil {
		return quorum.Proposal{}, quorum.Digest{}, nil, err
	}
	p, d, err := verifyCanonical(info.GetCanonicalProposal())
	if err != nil {
		return p, d, nil, err
	}
	if p.ID != id {
		return p, d, nil, localError(codes.DataLoss, fmt.Errorf("asked for proposal %s, server sent %s", id, p.ID))
	}
	if info.GetDigest() != d.String() {
		return p, d, nil, localError(codes.DataLoss, fmt.Errorf("server's digest %s for %s does not match its canonical bytes (%s)", info.GetDigest(), id, d))
	}
	return p, d, info, nil
}

func verifyCanonical(b []byte) (quorum.Proposal, quorum.Digest, error) {
	p, err := quorum.ParseCanonical(b)
	if err != nil {
		return p, quorum.Digest{}, localError(codes.DataLoss, fmt.Errorf("proposal bytes: %w", err))
	}
	return p, sha256.Sum256(b), nil
}

func (a *app) proposalShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a proposal: what it does, its digest, approvals, state and time-lock",
		Args:  exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.governance(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			p, _, info, err := fetchVerified(ctx, c, args[0])
			if err != nil {
				return err
			}
			return a.emit(info, func(w io.Writer) { printProposal(w, p, info, false) })
		},
	}
}

func (a *app) proposalListCommand() *cobra.Command {
	var state string
	var pageSize int32
	var pageToken string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List proposals, newest first",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &custodyv1.ListProposalsRequest{PageSize: pageSize, PageToken: pageToken}
			if state != "" {
				st, ok := proposalStates[state]
				if !ok {
					return usageErrorf("--state must be one of %s, not %q", stateNames(), state)
				}
				req.State = st
			}
			if pageSize < 0 {
				return usageErrorf("--page-size must not be negative")
			}
			c, ctx, cancel, err := a.governance(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.ListProposals(ctx, req)
			if err != nil {
				return err
			}
			// What each proposal will do is derived here from its canonical
			// bytes, as proposal show does, not taken from the server.
			for _, info := range resp.GetProposals() {
				info.Summary = localSummary(info)
			}
			return a.emit(resp, func(w io.Writer) {
				if len(resp.GetProposals()) == 0 {
					fmt.Fprintln(w, "no proposals")
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				if len(resp.GetProposals()) > 0 {
					fmt.Fprintln(tw, "ID\tSTATE\tAPPROVALS\tEXPIRES\tWILL")
				}
				for _, p := range resp.GetProposals() {
					fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\n", p.GetId(), stateName(p.GetState()),
						len(p.GetApprovals()), p.GetThreshold(), formatTime(p.GetExpires()), oneLine(p.GetSummary()))
				}
				_ = tw.Flush()
				if t := resp.GetNextPageToken(); t != "" {
					fmt.Fprintf(w, "more: --page-token %s\n", t)
				}
			})
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only proposals in this state: "+stateNames())
	cmd.Flags().Int32Var(&pageSize, "page-size", 0, "proposals per page; 0 for the server's default")
	cmd.Flags().StringVar(&pageToken, "page-token", "", "page token from a previous list")
	return cmd
}

// proposalDecideCommand is "approve" or (veto true) "veto".
func (a *app) proposalDecideCommand(veto bool) *cobra.Command {
	var sf signerFlags
	var officer, sigFile string
	var yes bool
	verb := "approve"
	short := "Approve a proposal: check its digest locally, show it, sign with your officer key, send"
	if veto {
		verb = "veto"
		short = "Veto a proposal: check its digest locally, show it, sign the veto with your officer key, send"
	}
	cmd := &cobra.Command{
		Use:   verb + " ID",
		Short: short,
		Long: short + `.

The proposal's canonical bytes are fetched and parsed here and the digest is
recomputed locally; what is shown is derived from those bytes, not from the
server's summary, and only that digest is signed. With --signature-file, a
signature made offline ("proposal sign") is checked and sent instead.`,
		Args: exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var signer *officerSigner
			if sigFile == "" {
				s, err := sf.load()
				if err != nil {
					return err
				}
				defer s.Close()
				signer = s
			} else if officer == "" {
				return usageErrorf("--signature-file needs --officer NAME")
			}
			c, ctx, cancel, err := a.governance(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			p, d, info, err := fetchVerified(ctx, c, args[0])
			if err != nil {
				return err
			}
			printProposal(a.stderr, p, info, false)
			officers, err := c.ListOfficers(ctx, &custodyv1.ListOfficersRequest{})
			if err != nil {
				return err
			}
			off, err := pickOfficer(officers, officer, signer)
			if err != nil {
				return err
			}
			if !yes {
				if err := a.confirm(fmt.Sprintf("%s proposal %s (digest %s) as officer %s?", verb, p.ID, d, off.Name)); err != nil {
					return err
				}
			}
			sig, err := decisionSignature(signer, sigFile, off, d, veto)
			if err != nil {
				return err
			}
			var out *custodyv1.ProposalInfo
			if veto {
				out, err = c.Veto(ctx, &custodyv1.VetoRequest{Id: p.ID, Officer: off.Name, Signature: sig})
			} else {
				out, err = c.Approve(ctx, &custodyv1.ApproveRequest{Id: p.ID, Officer: off.Name, Signature: sig})
			}
			if err != nil {
				return err
			}
			done := "approved"
			if veto {
				done = "vetoed"
			}
			return a.emit(out, func(w io.Writer) {
				fmt.Fprintf(w, "%s %s as %s: %s, approvals %d/%d\n", done, out.GetId(), off.Name, stateName(out.GetState()),
					len(out.GetApprovals()), out.GetThreshold())
			})
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&officer, "officer", "", "your officer name; default found by matching your key to the officer list")
	cmd.Flags().StringVar(&sigFile, "signature-file", "", "send this offline signature (base64, from proposal sign) instead of signing here")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

// decisionSignature signs (or reads) the approval or veto of d and checks
// it verifies under off's key before anything is sent.
func decisionSignature(signer *officerSigner, sigFile string, off quorum.Officer, d quorum.Digest, veto bool) ([]byte, error) {
	var sig []byte
	var err error
	if sigFile != "" {
		raw, rerr := os.ReadFile(sigFile)
		if rerr != nil {
			return nil, localError(codes.FailedPrecondition, fmt.Errorf("read signature: %w", rerr))
		}
		if sig, err = base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw))); err != nil {
			return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: not base64", sigFile))
		}
	} else if veto {
		sig, err = quorum.SignVeto(signer, d)
	} else {
		sig, err = quorum.SignApproval(signer, d)
	}
	if err != nil {
		return nil, localError(codes.Internal, fmt.Errorf("sign: %w", err))
	}
	check := quorum.VerifyApproval
	if veto {
		check = quorum.VerifyVeto
	}
	if err := check(off, d, sig); err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("signature does not verify under officer %s's registered key: %w", off.Name, err))
	}
	return sig, nil
}

// pickOfficer finds the officer to act as: by name, or by the signer's key.
func pickOfficer(resp *custodyv1.ListOfficersResponse, name string, signer *officerSigner) (quorum.Officer, error) {
	var fp string
	if signer != nil {
		o, err := quorum.NewOfficer("me", signer.Public())
		if err != nil {
			return quorum.Officer{}, localError(codes.InvalidArgument, err)
		}
		fp = o.Fingerprint()
	}
	for _, o := range resp.GetOfficers() {
		off := quorum.Officer{Name: o.GetName(), PublicKey: o.GetPublicKeyDer()}
		if (name == "" || off.Name == name) && (fp == "" || off.Fingerprint() == fp) {
			return off, nil
		}
	}
	if name != "" && fp != "" {
		return quorum.Officer{}, localError(codes.PermissionDenied, fmt.Errorf("officer %q is not registered with this key (fingerprint %s)", name, fp))
	}
	if name != "" {
		return quorum.Officer{}, localError(codes.NotFound, fmt.Errorf("no officer called %q", name))
	}
	return quorum.Officer{}, localError(codes.PermissionDenied, fmt.Errorf("%w (fingerprint %s)", errNotOfficer, fp))
}

func (a *app) proposalSignCommand() *cobra.Command {
	var sf signerFlags
	var out string
	var veto, yes bool
	cmd := &cobra.Command{
		Use:   "sign FILE",
		Short: "Offline: check canonical proposal bytes, show them, and sign an approval (or --veto)",
		Long: `Reads canonical proposal bytes (proposal create --out FILE), parses them, shows
what the proposal does and its digest, and signs the approval (or veto) with
your officer key, without contacting custodyd. Send the signature with
"proposal approve ID --officer NAME --signature-file SIG".`,
		Args: exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return localError(codes.FailedPrecondition, fmt.Errorf("read proposal: %w", err))
			}
			p, d, err := verifyCanonical(raw)
			if err != nil {
				return err
			}
			signer, err := sf.load()
			if err != nil {
				return err
			}
			defer signer.Close()
			info := &custodyv1.ProposalInfo{Id: p.ID, Kind: string(p.Kind), Digest: d.String(), Summary: summarize(p), Proposer: p.Proposer}
			printProposal(a.stderr, p, info, true)
			fmt.Fprintln(a.stderr, "status:     offline: its state on custodyd is not checked here")
			if !yes {
				if err := a.confirm(fmt.Sprintf("sign %s of proposal %s (digest %s)?", map[bool]string{false: "approval", true: "veto"}[veto], p.ID, d)); err != nil {
					return err
				}
			}
			me, err := quorum.NewOfficer("me", signer.Public())
			if err != nil {
				return localError(codes.InvalidArgument, err)
			}
			sig, err := decisionSignature(signer, "", me, d, veto)
			if err != nil {
				return err
			}
			enc := base64.StdEncoding.EncodeToString(sig)
			if out != "" {
				if err := createFile(out, []byte(enc+"\n"), 0o644); err != nil {
					return err
				}
			}
			return a.emitValue(map[string]string{"id": p.ID, "digest": d.String(), "fingerprint": me.Fingerprint(), "signature": enc},
				func(w io.Writer) {
					fmt.Fprintf(w, "id:          %s\ndigest:      %s\nfingerprint: %s\nsignature:   %s\n", p.ID, d, me.Fingerprint(), enc)
				})
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&out, "out", "", "also write the base64 signature to this new file")
	cmd.Flags().BoolVar(&veto, "veto", false, "sign a veto instead of an approval")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

// confirm asks on stderr and reads one line from stdin; only "y" or "yes"
// proceeds. It reads byte by byte and stops at the newline, so that the
// next command reading the same stdin (a script answering several
// questions) gets the rest.
func (a *app) confirm(question string) error {
	fmt.Fprintf(a.stderr, "%s [y/N] ", question)
	line := readLine(a.stdin, 64)
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return localError(codes.Canceled, fmt.Errorf("not confirmed; nothing was signed or sent"))
}

// readLine reads up to the first newline (consumed) or max bytes, without
// reading ahead.
func readLine(r io.Reader, max int) string {
	var b []byte
	var c [1]byte
	for tries := 0; len(b) < max && tries < max+100; tries++ { // bounded even if Read returns 0, nil
		n, err := r.Read(c[:])
		if n == 1 {
			if c[0] == '\n' {
				break
			}
			b = append(b, c[0])
		}
		if err != nil {
			break
		}
	}
	return string(b)
}

// printProposal writes what a proposal does, derived from its parsed bytes.
func printProposal(w io.Writer, p quorum.Proposal, info *custodyv1.ProposalInfo, local bool) {
	fmt.Fprintf(w, "proposal:   %s\n", p.ID)
	fmt.Fprintf(w, "kind:       %s\n", p.Kind)
	fmt.Fprintf(w, "will:       %s\n", summarize(p))
	fmt.Fprintf(w, "digest:     %s\n", info.GetDigest())
	fmt.Fprintf(w, "proposer:   %s\n", p.Proposer)
	fmt.Fprintf(w, "vault:      %s\n", dash(p.Vault))
	fmt.Fprintf(w, "created:    %s\n", p.Created.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "expires:    %s\n", p.Expires.UTC().Format(time.RFC3339))
	if local {
		if quorum.Widening(p.Payload, quorum.Current{}) {
			fmt.Fprintf(w, "time-lock:  widens access (or may: the server compares budgets); waits out the time-lock after approval\n")
		} else {
			fmt.Fprintf(w, "time-lock:  none (does not widen access)\n")
		}
		return
	}
	fmt.Fprintf(w, "state:      %s\n", stateName(info.GetState()))
	fmt.Fprintf(w, "approvals:  %d of %d", len(info.GetApprovals()), info.GetThreshold())
	if len(info.GetApprovals()) > 0 {
		fmt.Fprintf(w, " (%s)", strings.Join(info.GetApprovals(), ", "))
	}
	fmt.Fprintln(w)
	switch {
	case !info.GetWidening():
		fmt.Fprintln(w, "time-lock:  none (does not widen access)")
	case info.GetTimeLockUntil() == nil:
		fmt.Fprintln(w, "time-lock:  widens access; the time-lock starts when the approvals are in")
	default:
		fmt.Fprintf(w, "time-lock:  until %s; any officer may veto until then\n", formatTime(info.GetTimeLockUntil()))
	}
	if v := info.GetVetoedBy(); v != "" {
		fmt.Fprintf(w, "vetoed by:  %s\n", v)
	}
	if t := info.GetExecutedTime(); t != nil {
		fmt.Fprintf(w, "executed:   %s\n", formatTime(t))
	}
	if r := info.GetResult(); r != "" {
		fmt.Fprintf(w, "result:     %s\n", oneLine(r))
	}
}

// localSummary is what a listed proposal will do, from its canonical bytes
// (checked against the digest the server reports); a proposal whose bytes
// do not parse or match says so instead of repeating the server's words.
func localSummary(info *custodyv1.ProposalInfo) string {
	p, d, err := verifyCanonical(info.GetCanonicalProposal())
	switch {
	case err != nil:
		return "UNREADABLE: " + err.Error()
	case p.ID != info.GetId() || d.String() != info.GetDigest():
		return fmt.Sprintf("MISMATCH: the server's id or digest does not match the proposal bytes (%s)", summarize(p))
	}
	return summarize(p)
}

// summarize says in one line exactly what executing p will do.
func summarize(p quorum.Proposal) string {
	switch v := p.Payload.(type) {
	case quorum.CreateKey:
		return fmt.Sprintf("create key %q (%s) in the HSM", v.Name, v.Algorithm)
	case quorum.DestroyKey:
		if v.Version == 0 {
			return fmt.Sprintf("schedule destruction of EVERY version of key %q", v.Name)
		}
		return fmt.Sprintf("schedule destruction of key %q version %d", v.Name, v.Version)
	case quorum.RotateKey:
		return fmt.Sprintf("rotate key %q to a new primary version", v.Name)
	case quorum.EnableVersion:
		return fmt.Sprintf("re-enable key %q version %d", v.Name, v.Version)
	case quorum.DisableVersion:
		return fmt.Sprintf("disable key %q version %d", v.Name, v.Version)
	case quorum.AddGrant:
		g := v.Grant
		ops := make([]string, len(g.Operations))
		for i, op := range g.Operations {
			ops[i] = string(op)
		}
		s := fmt.Sprintf("grant %s to identity %s on key %q as %s", strings.Join(ops, ","), g.Identity, g.Key, g.ID)
		if len(g.ContextMatch) > 0 {
			s += ", only for context " + formatMatch(g.ContextMatch)
		} else {
			s += ", for any encryption context"
		}
		if len(g.RecipientKeys) > 0 {
			fps := make([]string, len(g.RecipientKeys))
			for i, r := range g.RecipientKeys {
				fps[i] = hex.EncodeToString(r)
			}
			s += ", data keys wrapped to " + strings.Join(fps, ",")
		}
		if g.AllowPlaintext {
			s += ", PLAINTEXT data keys allowed"
		}
		if g.SPKI != "" {
			s += ", only for the certificate key sha256:" + g.SPKI
		} else {
			s += ", for any certificate with that identity (key not pinned)"
		}
		return s
	case quorum.RemoveGrant:
		return fmt.Sprintf("remove grant %s", v.GrantID)
	case quorum.SetBudget:
		who := "identity " + v.Identity
		if v.Identity == "" {
			who = "all identities together"
		}
		b := v.Budget
		return fmt.Sprintf("set budget of %s on key %q: rate %g/s, burst %d, at most %d per %s", who, v.Key, b.Rate, b.Burst, b.Volume, formatWindow(b.Window))
	case quorum.Unfreeze:
		return fmt.Sprintf("unfreeze identity %s on key %q", v.Identity, v.Key)
	case quorum.AddOfficer:
		return fmt.Sprintf("add officer %q with %s key %s", v.Officer.Name, keyTypeName(v.Officer.PublicKey), v.Officer.Fingerprint())
	case quorum.RemoveOfficer:
		return fmt.Sprintf("remove officer %q", v.Name)
	case quorum.SetThreshold:
		return fmt.Sprintf("require %d officer approvals per proposal", v.Threshold)
	case quorum.RekeySeal:
		s := "replace the HSM PIN with a new random one split among the current officers (M = the current threshold); the old PIN is retired once every new holder confirms"
		for _, k := range v.ShareKeys {
			s += fmt.Sprintf("; officer %q's share encrypted to share key %s", k.Officer, seal.Fingerprint(k.PublicKey))
		}
		if v.Reason != "" {
			s += "; reason: " + v.Reason
		}
		return s
	case quorum.SetTrust:
		return summarizeTrust(v.Trust)
	case quorum.DisclosureOrder:
		o := v.Order
		return fmt.Sprintf("disclosure order for case %q: identity %s may decrypt/unwrap with key %q only where context is %s, at most %d times, until %s",
			o.CaseRef, o.Recipient, o.Key, formatMatch(o.ContextMatch), o.MaxUses, o.NotAfter.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("%s (no summary for this kind; read the canonical bytes)", p.Kind)
}

func formatMatch(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// parseMatch parses k=v items into a context match, refusing duplicates.
func parseMatch(items []string) (map[string]string, error) {
	if len(items) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(items))
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if !ok || k == "" {
			return nil, usageErrorf("--context item %q is not k=v", it)
		}
		if _, dup := m[k]; dup {
			return nil, usageErrorf("--context key %q given twice", k)
		}
		m[k] = v
	}
	return m, nil
}

// parseDeadline reads an RFC 3339 time or a duration from now.
func parseDeadline(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, usageErrorf("--not-after is required")
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, usageErrorf("--not-after must be an RFC 3339 time or a positive duration, not %q", s)
	}
	return now.Add(d).UTC().Truncate(time.Second), nil
}

// spkiDigestFile returns the SHA-256 of a PEM public key's SPKI DER.
func spkiDigestFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("read recipient key: %w", err))
	}
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != pemPublicKey {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: not a PEM %q block", path, pemPublicKey))
	}
	if _, err := x509.ParsePKIXPublicKey(b.Bytes); err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w", path, err))
	}
	d := sha256.Sum256(b.Bytes)
	return d[:], nil
}

// certIdentity is the identity custodyd sees for a client certificate (the
// rule of internal/pki.Identity): its URI SAN if it has exactly one (a URI
// claiming the reserved "spki" scheme is refused), else "spki:" and the hex
// SHA-256 of its public key. A proposal's proposer must be exactly this.
func certIdentity(certFile string) (string, error) {
	if certFile == "" {
		return "", usageErrorf("a client certificate (--cert) is required: a proposal is filed in its caller's own name")
	}
	raw, err := os.ReadFile(certFile)
	if err != nil {
		return "", localError(codes.FailedPrecondition, fmt.Errorf("read client certificate: %w", err))
	}
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != "CERTIFICATE" {
		return "", localError(codes.InvalidArgument, fmt.Errorf("%s: no PEM certificate", certFile))
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return "", localError(codes.InvalidArgument, fmt.Errorf("%s: %w", certFile, err))
	}
	if len(c.URIs) == 1 {
		if strings.EqualFold(c.URIs[0].Scheme, "spki") {
			return "", localError(codes.InvalidArgument, fmt.Errorf("%s: its URI SAN uses the reserved spki scheme; custodyd refuses it", certFile))
		}
		return c.URIs[0].String(), nil
	}
	d := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "spki:" + hex.EncodeToString(d[:]), nil
}

func stateName(s custodyv1.ProposalState) string {
	for n, v := range proposalStates {
		if v == s {
			return n
		}
	}
	return s.String()
}

func stateNames() string {
	names := make([]string, 0, len(proposalStates))
	for n := range proposalStates {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, "|")
}

// randomID returns prefix and 16 random hex digits.
func randomID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+): it crashes the program instead
	return prefix + hex.EncodeToString(b[:])
}

// vaultID asks the vault at --addr for its id (StatusService).
func (a *app) vaultID(ctx context.Context) (string, error) {
	conn, err := a.connect()
	if err != nil {
		return "", err
	}
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	st, err := custodyv1.NewStatusServiceClient(conn).GetStatus(cctx, &custodyv1.GetStatusRequest{})
	if err != nil {
		return "", err
	}
	if st.GetVaultId() == "" {
		return "", localError(codes.FailedPrecondition, fmt.Errorf("custodyd at %s did not say which vault it is (older custodyd?); pass --vault", a.addr))
	}
	return st.GetVaultId(), nil
}
