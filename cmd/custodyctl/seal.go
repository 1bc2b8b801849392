package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/seal"
	"github.com/custodyhq/custody/internal/secmem"
)

func (a *app) sealClient(ctx context.Context) (custodyv1.SealServiceClient, context.Context, context.CancelFunc, error) {
	conn, err := a.connect()
	if err != nil {
		return nil, nil, nil, err
	}
	cctx, cancel := a.callCtx(ctx)
	return custodyv1.NewSealServiceClient(conn), cctx, cancel, nil
}

var sealStateNames = map[custodyv1.SealState]string{
	custodyv1.SealState_SEAL_STATE_AWAITING_CEREMONY: "sealed, awaiting the key ceremony",
	custodyv1.SealState_SEAL_STATE_SEALED:            "SEALED",
	custodyv1.SealState_SEAL_STATE_UNSEALED:          "unsealed",
	custodyv1.SealState_SEAL_STATE_FENCED:            "FENCED (stopped serving)",
}

// printSealStatus writes a seal status for people.
func printSealStatus(w io.Writer, st *custodyv1.SealStatus) {
	fmt.Fprintf(w, "seal:        %s\n", sealStateNames[st.GetState()])
	src := st.GetPinSource()
	switch src {
	case seal.SourceOfficers:
		src += " (the HSM PIN is split among the officers; on no disk)"
	case "":
	default:
		src += " (the HSM PIN is ON THIS HOST: root there can use the HSM; see docs/threat-model.md)"
	}
	fmt.Fprintf(w, "pin source:  %s\n", src)
	if st.GetState() == custodyv1.SealState_SEAL_STATE_SEALED {
		fmt.Fprintf(w, "shares:      %d of %d accepted", st.GetSharesAccepted(), st.GetSharesNeeded())
		if len(st.GetOfficersAccepted()) > 0 {
			fmt.Fprintf(w, " (%s; discarded at %s unless complete)", strings.Join(st.GetOfficersAccepted(), ", "),
				st.GetProgressExpires().AsTime().UTC().Format(time.RFC3339))
		}
		fmt.Fprintln(w)
	}
	if len(st.GetVaultId()) > 0 {
		fmt.Fprintf(w, "vault:       %x, PIN epoch %d\n", st.GetVaultId(), st.GetEpoch())
	}
	if st.GetState() != custodyv1.SealState_SEAL_STATE_UNSEALED {
		fmt.Fprintf(w, "unseal key:  %s\n", seal.FormatFingerprint(st.GetUnsealKeyFingerprint()))
	}
	if r := st.GetRekey(); r != nil {
		fmt.Fprintf(w, "rekey:       epoch %d pending; confirmed: %s; waiting for: %s\n", r.GetEpoch(),
			strings.Join(r.GetConfirmed(), ", "), strings.Join(r.GetWaiting(), ", "))
	}
	if d := st.GetDetail(); d != "" {
		fmt.Fprintf(w, "note:        %s\n", d)
	}
}

func (a *app) sealCommand() *cobra.Command {
	return groupCommand("seal", "Sealed start: status, and rekey confirmation",
		a.sealStatusCommand(), a.sealConfirmRekeyCommand())
}

func (a *app) sealStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show whether custodyd is sealed, k-of-M unseal progress, the unseal key and the PIN source",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.sealClient(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			st, err := c.GetSealStatus(ctx, &custodyv1.GetSealStatusRequest{})
			if err != nil {
				return err
			}
			return a.emit(st, func(w io.Writer) { printSealStatus(w, st) })
		},
	}
}

// officerKeys are the flags an officer's seal commands share.
type officerKeys struct {
	signer signerFlags
	share  shareKeyFlags
}

func (o *officerKeys) register(cmd *cobra.Command) {
	o.signer.register(cmd)
	o.share.register(cmd)
}

// loadSigner opens the signing key first: a token signing key initialises
// the library through crypto11, and a token share key then shares it.
func (o *officerKeys) loadSigner() (*officerSigner, string, error) {
	s, err := o.signer.load()
	if err != nil {
		return nil, "", err
	}
	der, err := x509.MarshalPKIXPublicKey(s.Public())
	if err != nil {
		s.Close()
		return nil, "", localError(codes.Internal, err)
	}
	return s, seal.Fingerprint(der), nil
}

// openShare decrypts the officer's envelope with their share key.
func (o *officerKeys) openShare(es *custodyv1.EncryptedShare) (*secmem.Buffer, error) {
	k, err := o.share.load(o.signer.keyFile, o.signer.pass, o.signer.pinEnv)
	if err != nil {
		return nil, err
	}
	defer k.Close()
	env := seal.Envelope{Index: int(es.GetIndex()), Officer: es.GetOfficer(), ShareKey: es.GetSharePublicKeyDer(),
		Sealed: es.GetSealedShare(), Commitment: es.GetCommitment()}
	share, err := seal.OpenShare(k, seal.VaultRef{VaultID: es.GetVaultId(), Epoch: es.GetEpoch()}, env)
	if err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("your share: %w", err))
	}
	return share, nil
}

// confirmSend shows what is about to be sent and to which key, and asks
// unless --yes, or the expected fingerprint was given and matches.
func (a *app) confirmSend(what, fp, expect string, yes bool) error {
	fmt.Fprintf(a.stderr, "%s\ncustodyd's unseal key fingerprint: %s\n", what, seal.FormatFingerprint(fp))
	if expect != "" {
		if strings.ReplaceAll(strings.ToLower(expect), " ", "") != fp {
			return localError(codes.FailedPrecondition, fmt.Errorf("custodyd's unseal key %s is not the expected %s: not sending (another process, or a restart?)", fp, expect))
		}
		return nil
	}
	if yes {
		return nil
	}
	fmt.Fprint(a.stderr, "Compare it with the fingerprint custodyd printed at start. Type yes to send: ")
	line, _ := bufio.NewReader(a.stdin).ReadString('\n')
	if strings.TrimSpace(line) != "yes" {
		return localError(codes.Canceled, fmt.Errorf("not sent"))
	}
	return nil
}

func (a *app) unsealCommand() *cobra.Command {
	var keys officerKeys
	var expect, transcript string
	var yes bool
	cmd := &cobra.Command{
		Use:   "unseal --officer-key FILE",
		Short: "Send this officer's share of the HSM PIN to a sealed custodyd",
		Long: `Fetches this officer's encrypted share from the sealed custodyd, decrypts it
here with the officer's share key (FILE.share, or --share-key, or a token key
with --share-pkcs11), checks it against its commitment, re-encrypts it to the
unseal key custodyd made at start and signs the submission (over a one-time
nonce) with the officer's signing key. Connect with the officer's mTLS
certificate. When M officers have sent theirs, custodyd logs in and serves.

Compare the unseal key fingerprint shown with the one custodyd printed on its
console (or pass it as --expect-unseal-key): a share sent to another process
is a share given away.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			secmem.Harden(false) // no core file of this process, which holds a share
			signer, fp, err := keys.loadSigner()
			if err != nil {
				return err
			}
			defer signer.Close()
			c, ctx, cancel, err := a.sealClient(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			es, err := c.GetShare(ctx, &custodyv1.GetShareRequest{OfficerFingerprint: fp})
			if err != nil {
				return err
			}
			if transcript != "" {
				if err := checkShareInTranscript(transcript, es); err != nil {
					return err
				}
			}
			what := fmt.Sprintf("Sending share %d of officer %s (vault %x, PIN epoch %d; %d shares unseal).",
				es.GetIndex(), es.GetOfficer(), es.GetVaultId(), es.GetEpoch(), es.GetThreshold())
			if err := a.confirmSend(what, es.GetUnsealKeyFingerprint(), expect, yes); err != nil {
				return err
			}
			if seal.Fingerprint(es.GetUnsealPublicKeyDer()) != es.GetUnsealKeyFingerprint() {
				return localError(codes.DataLoss, fmt.Errorf("the unseal key does not match its fingerprint"))
			}
			share, err := keys.openShare(es)
			if err != nil {
				return err
			}
			sub, err := seal.Submit(signer, share.Bytes(), seal.Target{Ref: seal.VaultRef{VaultID: es.GetVaultId(), Epoch: es.GetEpoch()},
				Index: int(es.GetIndex()), EphemeralKey: es.GetUnsealPublicKeyDer(), Nonce: es.GetNonce()})
			share.Destroy()
			if err != nil {
				return localError(codes.Internal, err)
			}
			st, err := c.Unseal(ctx, &custodyv1.UnsealRequest{VaultId: sub.Ref.VaultID, Epoch: sub.Ref.Epoch, Index: uint32(sub.Index),
				OfficerFingerprint: sub.OfficerFingerprint, UnsealKeyFingerprint: sub.EphemeralFingerprint, Nonce: sub.Nonce,
				SealedShare: sub.Sealed, Signature: sub.Signature})
			if err != nil {
				return err
			}
			return a.emit(st, func(w io.Writer) {
				if st.GetState() == custodyv1.SealState_SEAL_STATE_UNSEALED {
					fmt.Fprintln(w, "share accepted: custodyd is unsealed and serving")
					return
				}
				fmt.Fprintf(w, "share accepted: %d of %d; custodyd is still sealed\n", st.GetSharesAccepted(), st.GetSharesNeeded())
			})
		},
	}
	keys.register(cmd)
	cmd.Flags().StringVar(&expect, "expect-unseal-key", "", "custodyd's unseal key fingerprint as printed at its start; send only to that key")
	cmd.Flags().BoolVar(&yes, "yes", false, "send without asking (after showing the unseal key fingerprint)")
	cmd.Flags().StringVar(&transcript, "transcript", "", "ceremony transcript directory: check the share's commitment against the signed transcript first")
	return cmd
}

// checkShareInTranscript verifies the transcript in dir (under the audit
// key that travelled with it) and that it records this share's commitment.
// It helps only for shares of the ceremony's PIN (epoch 1).
func checkShareInTranscript(dir string, es *custodyv1.EncryptedShare) error {
	doc, err1 := os.ReadFile(filepath.Join(dir, fileTranscriptJSON))
	sig, err2 := os.ReadFile(filepath.Join(dir, fileTranscriptSig))
	pubPEM, err3 := os.ReadFile(filepath.Join(dir, fileAuditPubKey))
	if err := firstErr(err1, err2, err3); err != nil {
		return localError(codes.FailedPrecondition, fmt.Errorf("--transcript: %w", err))
	}
	der, err := pemPublicKeyDER(pubPEM)
	if err != nil {
		return err
	}
	t, err := verifyTranscript(doc, sig, der)
	if err != nil {
		return localError(codes.DataLoss, fmt.Errorf("--transcript: %w", err))
	}
	if t.Seal == nil || t.Seal.VaultID != hex.EncodeToString(es.GetVaultId()) || t.Seal.Epoch != es.GetEpoch() {
		return localError(codes.FailedPrecondition, fmt.Errorf("--transcript records no shares of vault %x epoch %d", es.GetVaultId(), es.GetEpoch()))
	}
	for _, s := range t.Seal.Shares {
		if s.Index == int(es.GetIndex()) {
			if s.Commitment != hex.EncodeToString(es.GetCommitment()) || s.Officer != es.GetOfficer() {
				return localError(codes.DataLoss, fmt.Errorf("share %d served by custodyd does not match the signed transcript (swapped?)", s.Index))
			}
			return nil
		}
	}
	return localError(codes.FailedPrecondition, fmt.Errorf("--transcript records no share %d", es.GetIndex()))
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func (a *app) sealConfirmRekeyCommand() *cobra.Command {
	var keys officerKeys
	cmd := &cobra.Command{
		Use:   "confirm-rekey --officer-key FILE",
		Short: "Prove your new share (from an executed rekey-seal proposal) decrypts; the last confirmation retires the old PIN",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			secmem.Harden(false)
			signer, fp, err := keys.loadSigner()
			if err != nil {
				return err
			}
			defer signer.Close()
			c, ctx, cancel, err := a.sealClient(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			es, err := c.GetRekeyShare(ctx, &custodyv1.GetShareRequest{OfficerFingerprint: fp})
			if err != nil {
				return err
			}
			share, err := keys.openShare(es)
			if err != nil {
				return err
			}
			ref := seal.VaultRef{VaultID: es.GetVaultId(), Epoch: es.GetEpoch()}
			conf, err := seal.Confirm(signer, ref, int(es.GetIndex()), share.Bytes())
			share.Destroy()
			if err != nil {
				return localError(codes.Internal, err)
			}
			st, err := c.ConfirmRekey(ctx, &custodyv1.ConfirmRekeyRequest{VaultId: ref.VaultID, Epoch: ref.Epoch, Index: uint32(conf.Index),
				OfficerFingerprint: conf.OfficerFingerprint, Proof: conf.Proof, Signature: conf.Signature})
			if err != nil {
				return err
			}
			return a.emit(st, func(w io.Writer) {
				if st.GetRekey() == nil {
					fmt.Fprintf(w, "confirmed: every new holder has; the old PIN is retired (epoch %d in force)\n", st.GetEpoch())
					return
				}
				fmt.Fprintf(w, "confirmed: waiting for %s\n", strings.Join(st.GetRekey().GetWaiting(), ", "))
			})
		},
	}
	keys.register(cmd)
	return cmd
}

// readInstallerPIN reads the installer's HSM PIN once: from stdin with
// --pin-stdin (first line), else from the terminal without echo. It is
// never a flag or an environment variable.
func (a *app) readInstallerPIN(fromStdin bool) (*secmem.Buffer, error) {
	var raw []byte
	if fromStdin {
		line, err := bufio.NewReader(a.stdin).ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, localError(codes.FailedPrecondition, fmt.Errorf("read the PIN from stdin: %w", err))
		}
		raw = bytes.TrimRight(line, "\r\n")
		if len(raw) != len(line) || err == io.EOF {
			defer clear(line)
		}
	} else {
		f, ok := a.stdin.(*os.File)
		if !ok || !term.IsTerminal(int(f.Fd())) {
			return nil, usageErrorf("the installer's HSM PIN is read from a terminal, or from stdin with --pin-stdin")
		}
		fmt.Fprint(a.stderr, "Installer's HSM user PIN (replaced at the ceremony; not echoed): ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(a.stderr)
		if err != nil {
			return nil, localError(codes.FailedPrecondition, fmt.Errorf("read the PIN: %w", err))
		}
		raw = b
	}
	if len(raw) == 0 {
		return nil, usageErrorf("the PIN is empty")
	}
	return secmem.From(raw)
}

// sealStatus asks custodyd for its seal status; a custodyd without the
// seal service answers nil.
func (a *app) sealStatus(ctx context.Context) (*custodyv1.SealStatus, error) {
	c, cctx, cancel, err := a.sealClient(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	st, err := c.GetSealStatus(cctx, &custodyv1.GetSealStatusRequest{})
	if status.Code(err) == codes.Unimplemented {
		return nil, nil
	}
	return st, err
}

// pemPublicKeyDER returns the DER of a PEM "PUBLIC KEY" block.
func pemPublicKeyDER(b []byte) ([]byte, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != pemPublicKey {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("not a PEM %q block", pemPublicKey))
	}
	return blk.Bytes, nil
}
