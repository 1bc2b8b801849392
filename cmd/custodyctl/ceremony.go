package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/seal"
)

// ceremonyConfig is ceremony.yaml. Paths are relative to the file's directory.
type ceremonyConfig struct {
	Threshold int               `yaml:"threshold"`
	Officers  []ceremonyOfficer `yaml:"officers"`
	Keys      []ceremonyKey     `yaml:"keys"`
	Grants    []ceremonyGrant   `yaml:"grants"`
	Budgets   []ceremonyBudget  `yaml:"budgets"`
}

type ceremonyOfficer struct {
	Name      string `yaml:"name"`
	PublicKey string `yaml:"public_key"`
	// SharePublicKey is the officer's share key (FILE.share.pub from
	// officer keygen): their share of the HSM PIN is encrypted to it.
	SharePublicKey string `yaml:"share_public_key"`
}

type ceremonyKey struct {
	Name        string `yaml:"name"`
	Purpose     string `yaml:"purpose"`
	Description string `yaml:"description"`
}

type ceremonyGrant struct {
	ID             string            `yaml:"id"`
	Identity       string            `yaml:"identity"`
	Key            string            `yaml:"key"`
	Operations     []string          `yaml:"operations"`
	ContextMatch   map[string]string `yaml:"context_match"`
	RecipientKeys  []string          `yaml:"recipient_keys"`
	AllowPlaintext bool              `yaml:"allow_plaintext"`
	// SPKI pins the grant to the relay's key as well as its identity: the
	// hex SHA-256 of its SubjectPublicKeyInfo, or the path of its
	// certificate or public key (PEM). Recommended (docs/ceremony.md).
	SPKI string `yaml:"spki"`
}

type ceremonyBudget struct {
	Identity string  `yaml:"identity"`
	Key      string  `yaml:"key"`
	Rate     float64 `yaml:"rate"`
	Burst    int     `yaml:"burst"`
	Volume   int64   `yaml:"volume"`
	Window   string  `yaml:"window"`
}

// errCeremonyConfig reports a ceremony.yaml that cannot be used; the
// message names the field path.
var errCeremonyConfig = errors.New("ceremony config")

// maxCeremonyFile bounds ceremony.yaml.
const maxCeremonyFile = 1 << 20

// loadCeremony reads, strictly decodes and validates ceremony.yaml and
// returns the request it declares. Every problem is reported with its field
// path ("officers[1].public_key: …").
func loadCeremony(path string, allowDev bool) (*custodyv1.InitCeremonyRequest, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errCeremonyConfig, err)
	}
	if len(raw) > maxCeremonyFile {
		return nil, fmt.Errorf("%w: %s: larger than %d bytes", errCeremonyConfig, path, maxCeremonyFile)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errCeremonyConfig, path, err)
	}
	if len(root.Content) == 0 {
		return nil, fmt.Errorf("%w: %s: empty", errCeremonyConfig, path)
	}
	w := &yamlWalker{lines: map[int]string{}}
	w.walk(root.Content[0], reflect.TypeFor[ceremonyConfig](), "", 0)
	if len(w.problems) > 0 {
		return nil, fmt.Errorf("%w: %s: %s", errCeremonyConfig, path, strings.Join(w.problems, "; "))
	}
	var cfg ceremonyConfig
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%w: %s: %s", errCeremonyConfig, path, w.withPaths(err))
	}
	var extra yaml.Node
	if dec.Decode(&extra) != io.EOF {
		return nil, fmt.Errorf("%w: %s: more than one YAML document", errCeremonyConfig, path)
	}
	req, err := cfg.request(filepath.Dir(path), allowDev)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errCeremonyConfig, path, err)
	}
	return req, nil
}

// request validates the config and builds the InitCeremony request.
func (c ceremonyConfig) request(dir string, allowDev bool) (*custodyv1.InitCeremonyRequest, error) {
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	req := &custodyv1.InitCeremonyRequest{AllowDev: allowDev}
	set := quorum.OfficerSet{Threshold: c.Threshold}
	if len(c.Officers) == 0 {
		return nil, fmt.Errorf("officers: at least one officer is required")
	}
	for i, o := range c.Officers {
		if o.PublicKey == "" {
			return nil, fmt.Errorf("officers[%d].public_key: required (path of the officer's .pub file)", i)
		}
		off, err := readOfficerPublicKey(resolve(o.PublicKey))
		if err != nil {
			return nil, fmt.Errorf("officers[%d].public_key: %v", i, err)
		}
		off.Name = o.Name
		set.Officers = append(set.Officers, off)
		po := &custodyv1.Officer{Name: o.Name, Fingerprint: off.Fingerprint(), PublicKeyDer: off.PublicKey}
		if o.SharePublicKey != "" {
			if po.SharePublicKeyDer, err = readSharePublicKey(resolve(o.SharePublicKey)); err != nil {
				return nil, fmt.Errorf("officers[%d].share_public_key: %v", i, err)
			}
		}
		req.Officers = append(req.Officers, po)
	}
	if err := set.Validate(allowDev); err != nil {
		msg := strings.TrimPrefix(err.Error(), quorum.ErrInvalidOfficers.Error()+": ")
		if c.Threshold == 1 && !allowDev {
			msg += " (pass --dev for a development vault)"
		}
		return nil, errors.New(msg)
	}
	req.Threshold = uint32(c.Threshold)
	keys := map[string]bool{}
	for i, k := range c.Keys {
		switch {
		case k.Name == "":
			return nil, fmt.Errorf("keys[%d].name: empty", i)
		case keys[k.Name]:
			return nil, fmt.Errorf("keys[%d].name: duplicate %q", i, k.Name)
		}
		p, ok := parsePurpose(k.Purpose)
		if !ok {
			return nil, fmt.Errorf("keys[%d].purpose: %q is not one of %s", i, k.Purpose, purposeNames())
		}
		keys[k.Name] = true
		req.Keys = append(req.Keys, &custodyv1.CeremonyKey{Name: k.Name, Purpose: p, Description: k.Description})
	}
	grantIDs := map[string]bool{}
	for i, g := range c.Grants {
		pg := policy.Grant{ID: g.ID, Identity: g.Identity, Key: g.Key, ContextMatch: g.ContextMatch, AllowPlaintext: g.AllowPlaintext}
		if g.SPKI != "" {
			pin, err := spkiPin(g.SPKI, resolve)
			if err != nil {
				return nil, fmt.Errorf("grants[%d].spki: %v", i, err)
			}
			pg.SPKI = pin
		}
		for _, op := range g.Operations {
			pg.Operations = append(pg.Operations, policy.Op(op))
		}
		for j, f := range g.RecipientKeys {
			d, err := spkiDigestFile(resolve(f))
			if err != nil {
				return nil, fmt.Errorf("grants[%d].recipient_keys[%d]: %v", i, j, err)
			}
			pg.RecipientKeys = append(pg.RecipientKeys, d)
		}
		if err := pg.Validate(); err != nil {
			return nil, fmt.Errorf("grants[%d].%s", i, strings.TrimPrefix(err.Error(), policy.ErrInvalidSpec.Error()+": "))
		}
		if grantIDs[g.ID] {
			return nil, fmt.Errorf("grants[%d].id: duplicate %q", i, g.ID)
		}
		grantIDs[g.ID] = true
		if !keys[g.Key] {
			return nil, fmt.Errorf("grants[%d].key: %q is not declared under keys", i, g.Key)
		}
		if err := pg.CheckUsable(); err != nil {
			return nil, fmt.Errorf("grants[%d]: %s", i, strings.TrimPrefix(err.Error(), policy.ErrUnusableGrant.Error()+": "))
		}
		req.Grants = append(req.Grants, &custodyv1.Grant{Id: pg.ID, Identity: pg.Identity, Key: pg.Key, Operations: g.Operations,
			ContextMatch: pg.ContextMatch, RecipientKeySha256: pg.RecipientKeys, AllowPlaintext: pg.AllowPlaintext, SpkiSha256: pg.SPKI})
	}
	budgets := map[[2]string]bool{}
	for i, b := range c.Budgets {
		win, err := time.ParseDuration(b.Window)
		if err != nil {
			return nil, fmt.Errorf("budgets[%d].window: %q is not a duration such as 24h", i, b.Window)
		}
		pb := policy.Budget{Rate: b.Rate, Burst: b.Burst, Volume: b.Volume, Window: win}
		if err := pb.Validate(); err != nil {
			return nil, fmt.Errorf("budgets[%d].%s", i, strings.TrimPrefix(err.Error(), policy.ErrInvalidSpec.Error()+": "))
		}
		switch {
		case !keys[b.Key]:
			return nil, fmt.Errorf("budgets[%d].key: %q is not declared under keys", i, b.Key)
		case budgets[[2]string{b.Identity, b.Key}]:
			return nil, fmt.Errorf("budgets[%d]: a second budget for identity %q on key %q", i, b.Identity, b.Key)
		}
		budgets[[2]string{b.Identity, b.Key}] = true
		req.Budgets = append(req.Budgets, &custodyv1.Budget{Identity: b.Identity, Key: b.Key, Rate: b.Rate,
			Burst: uint32(b.Burst), Volume: b.Volume, Window: durationpb.New(win)})
	}
	return req, nil
}

// yamlWalker reports unknown fields with their full paths and remembers
// which path each line holds, so yaml's type errors (which carry only a
// line number) can be given one.
type yamlWalker struct {
	problems []string
	lines    map[int]string
}

func (w *yamlWalker) walk(n *yaml.Node, t reflect.Type, path string, depth int) {
	if n == nil || depth > 8 || n.Kind == yaml.AliasNode {
		return
	}
	if path != "" && n.Kind == yaml.ScalarNode {
		if _, seen := w.lines[n.Line]; !seen {
			w.lines[n.Line] = path
		}
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			child := k.Value
			if path != "" {
				child = path + "." + k.Value
			}
			f, ok := yamlField(t, k.Value)
			if !ok {
				w.problems = append(w.problems, child+": unknown field")
				continue
			}
			w.lines[k.Line] = child
			w.walk(v, f.Type, child, depth+1)
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, e := range n.Content {
			w.walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), depth+1)
		}
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			w.walk(n.Content[i+1], t.Elem(), fmt.Sprintf("%s[%q]", path, n.Content[i].Value), depth+1)
		}
	}
}

func yamlField(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

var yamlLineRE = regexp.MustCompile(`line (\d+): `)

// withPaths rewrites "line N: …" in yaml's errors to "PATH (line N): …".
func (w *yamlWalker) withPaths(err error) string {
	return yamlLineRE.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, _ := strconv.Atoi(yamlLineRE.FindStringSubmatch(m)[1])
		if p, ok := w.lines[n]; ok {
			return fmt.Sprintf("%s (line %d): ", p, n)
		}
		return m
	})
}

// Transcript types live in internal/quorum, shared with custodyd, which
// produces exactly that JSON; the aliases keep this package's names.
type (
	Transcript        = quorum.Transcript
	TranscriptOfficer = quorum.TranscriptOfficer
	TranscriptKey     = quorum.TranscriptKey
	TranscriptAttr    = quorum.TranscriptAttr
	TranscriptBudget  = quorum.TranscriptBudget
	TranscriptStep    = quorum.TranscriptStep
)

// TranscriptFormat is the value of Transcript.Format this version reads.
const TranscriptFormat = quorum.TranscriptFormat

// Transcript file names in a transcript directory.
const (
	fileTranscriptJSON = "transcript.json"
	fileTranscriptText = "transcript.txt"
	fileTranscriptSig  = "transcript.sig"
	fileAuditPubKey    = "audit-pubkey.pem"
)

// errTranscriptContent reports a verified transcript that is malformed or
// records something unsafe.
var errTranscriptContent = quorum.ErrTranscriptContent

// verifyTranscript checks sig (ASN.1 ECDSA P-256 over SHA-256(doc)) under
// the audit key (PKIX DER) and decodes the transcript strictly.
func verifyTranscript(doc, sig, auditDER []byte) (*Transcript, error) {
	return quorum.VerifyTranscript(doc, sig, auditDER)
}

func fingerprintDER(der []byte) string {
	d := sha256.Sum256(der)
	return hex.EncodeToString(d[:])
}

func (a *app) ceremonyCommand() *cobra.Command {
	return groupCommand("ceremony", "Run the initial key ceremony and verify its signed transcript",
		a.ceremonyInitCommand(), a.ceremonyVerifyCommand(), a.ceremonyFetchCommand())
}

func (a *app) ceremonyInitCommand() *cobra.Command {
	var config, outDir, expect string
	var dev, pinStdin, yes bool
	cmd := &cobra.Command{
		Use:   "init --config ceremony.yaml --transcript-out DIR",
		Short: "Run the one-time key ceremony against a fresh custodyd and save the signed transcript",
		Long: `Reads ceremony.yaml (officers and their public key files, the threshold M,
the first keys, grants and budgets), checks it here, and asks custodyd to
run the ceremony: it runs once per vault and is refused afterwards. The
signed transcript is written to DIR (transcript.json, transcript.txt,
transcript.sig, audit-pubkey.pem), verified, and checked against what
ceremony.yaml declared. M must be at least 2 unless --dev.

A production custodyd without pin_file/pin_env waits, sealed, for this
ceremony: custodyctl then asks once for the installer's HSM user PIN (from
the terminal, or the first line of stdin with --pin-stdin; never a flag),
encrypts it to custodyd's unseal key (compare the fingerprint with the one
custodyd printed) and sends it with the ceremony. custodyd logs in with it,
replaces it with a random PIN nobody sees, splits that M-of-N among the
officers (each share encrypted to the officer's share_public_key) and
records who holds which share in the transcript. The installer's PIN no
longer works afterwards.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config == "" || outDir == "" {
				return usageErrorf("--config and --transcript-out are required")
			}
			req, err := loadCeremony(config, dev)
			if err != nil {
				return localError(codes.InvalidArgument, err)
			}
			if err := prepareTranscriptDir(outDir); err != nil {
				return err
			}
			st, err := a.sealStatus(cmd.Context())
			if err != nil {
				return err
			}
			sealing := st.GetState() == custodyv1.SealState_SEAL_STATE_AWAITING_CEREMONY
			switch {
			case st.GetState() == custodyv1.SealState_SEAL_STATE_SEALED:
				return localError(codes.FailedPrecondition, fmt.Errorf("custodyd is sealed: its ceremony has run (officers unseal it with custodyctl unseal)"))
			case sealing:
				for i, o := range req.GetOfficers() {
					if len(o.GetSharePublicKeyDer()) == 0 {
						return localError(codes.InvalidArgument, fmt.Errorf("%s: officers[%d].share_public_key: required: this custodyd splits its HSM PIN among the officers (officer keygen writes FILE.share.pub)", config, i))
					}
				}
				fp := st.GetUnsealKeyFingerprint()
				if seal.Fingerprint(st.GetUnsealPublicKeyDer()) != fp {
					return localError(codes.DataLoss, fmt.Errorf("custodyd's unseal key does not match its fingerprint"))
				}
				if pinStdin && expect == "" && !yes {
					return usageErrorf("with --pin-stdin there is no terminal to confirm on: give --expect-unseal-key FINGERPRINT (as custodyd printed it), or --yes")
				}
				pin, err := a.readInstallerPIN(pinStdin)
				if err != nil {
					return err
				}
				err = a.confirmSend("Sending the installer's HSM PIN with the ceremony.", fp, expect, yes)
				if err == nil {
					req.EncryptedPin, err = seal.SealPIN(st.GetUnsealPublicKeyDer(), pin.Bytes())
				}
				pin.Destroy()
				if err != nil {
					return err
				}
				req.UnsealKeyFingerprint = fp
			}
			c, ctx, cancel, err := a.governance(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			tr, err := c.InitCeremony(ctx, req)
			if err != nil {
				return err
			}
			// Save first: the transcript is the record, even if it disagrees.
			if err := writeTranscript(outDir, tr); err != nil {
				return err
			}
			t, err := verifyTranscript(tr.GetJson(), tr.GetSignature(), tr.GetAuditPublicKeyDer())
			if err != nil {
				return localError(codes.DataLoss, fmt.Errorf("transcript saved in %s but: %w", outDir, err))
			}
			if err := matchDeclared(t, req); err != nil {
				return localError(codes.DataLoss, fmt.Errorf("transcript saved in %s but it does not match %s: %w", outDir, config, err))
			}
			if sealing {
				if err := matchShares(t, req); err != nil {
					return localError(codes.DataLoss, fmt.Errorf("transcript saved in %s but: %w", outDir, err))
				}
			}
			return a.reportTranscript(t, tr.GetAuditPublicKeyDer(), outDir)
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "ceremony.yaml")
	cmd.Flags().StringVar(&outDir, "transcript-out", "", "directory to write the transcript into (created; must not hold a transcript)")
	cmd.Flags().BoolVar(&dev, "dev", false, "allow M = 1 (development vaults only; recorded in the transcript)")
	cmd.Flags().BoolVar(&pinStdin, "pin-stdin", false, "read the installer's HSM PIN from the first line of stdin instead of the terminal")
	cmd.Flags().StringVar(&expect, "expect-unseal-key", "", "custodyd's unseal key fingerprint as printed at its start; send the PIN only to that key")
	cmd.Flags().BoolVar(&yes, "yes", false, "send the PIN without asking (after showing the unseal key fingerprint)")
	return cmd
}

// matchShares checks that the transcript records a share for every
// declared officer, encrypted to the share key ceremony.yaml named.
func matchShares(t *Transcript, req *custodyv1.InitCeremonyRequest) error {
	if t.Seal == nil || t.Seal.PINSource != seal.SourceOfficers {
		return fmt.Errorf("the transcript does not record the PIN as split among the officers")
	}
	byName := map[string]string{}
	for _, s := range t.Seal.Shares {
		byName[s.Officer] = s.ShareKeyFingerprint
	}
	for _, o := range req.GetOfficers() {
		if byName[o.GetName()] != seal.Fingerprint(o.GetSharePublicKeyDer()) {
			return fmt.Errorf("officer %s's share is not recorded as encrypted to the declared share key", o.GetName())
		}
	}
	if t.Seal.Threshold != int(req.GetThreshold()) {
		return fmt.Errorf("the PIN is split %d of %d, not %d", t.Seal.Threshold, len(t.Seal.Shares), req.GetThreshold())
	}
	return nil
}

func (a *app) ceremonyFetchCommand() *cobra.Command {
	var outDir string
	cmd := &cobra.Command{
		Use:   "fetch --transcript-out DIR",
		Short: "Download the ceremony transcript from custodyd, verify it and save it",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if outDir == "" {
				return usageErrorf("--transcript-out is required")
			}
			if err := prepareTranscriptDir(outDir); err != nil {
				return err
			}
			c, ctx, cancel, err := a.governance(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			tr, err := c.GetCeremonyTranscript(ctx, &custodyv1.GetCeremonyTranscriptRequest{})
			if err != nil {
				return err
			}
			t, err := verifyTranscript(tr.GetJson(), tr.GetSignature(), tr.GetAuditPublicKeyDer())
			if err != nil {
				return localError(codes.DataLoss, err)
			}
			if err := writeTranscript(outDir, tr); err != nil {
				return err
			}
			return a.reportTranscript(t, tr.GetAuditPublicKeyDer(), outDir)
		},
	}
	cmd.Flags().StringVar(&outDir, "transcript-out", "", "directory to write the transcript into")
	return cmd
}

func (a *app) ceremonyVerifyCommand() *cobra.Command {
	var dir, pubFile string
	cmd := &cobra.Command{
		Use:   "verify --dir DIR [--pubkey audit.pem]",
		Short: "Verify a ceremony transcript's signature offline and print what it records",
		Long: `Checks DIR/transcript.sig (ECDSA P-256, ASN.1, over SHA-256 of the bytes of
DIR/transcript.json) under the audit public key, then prints the officers'
key fingerprints and each key's HSM attributes. The audit key defaults to
DIR/audit-pubkey.pem, which travelled with the transcript: for assurance,
pass --pubkey with a copy obtained independently (e.g. from the ceremony
room) and compare fingerprints. Exits 1 if the signature does not verify or
any key's attributes are unsafe.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageErrorf("--dir is required")
			}
			if pubFile == "" {
				pubFile = filepath.Join(dir, fileAuditPubKey)
			}
			doc, err := os.ReadFile(filepath.Join(dir, fileTranscriptJSON))
			if err != nil {
				return localError(codes.FailedPrecondition, err)
			}
			sig, err := os.ReadFile(filepath.Join(dir, fileTranscriptSig))
			if err != nil {
				return localError(codes.FailedPrecondition, err)
			}
			pubPEM, err := os.ReadFile(pubFile)
			if err != nil {
				return localError(codes.FailedPrecondition, err)
			}
			b, _ := pem.Decode(pubPEM)
			if b == nil || b.Type != pemPublicKey {
				return localError(codes.InvalidArgument, fmt.Errorf("%s: not a PEM %q block", pubFile, pemPublicKey))
			}
			t, err := verifyTranscript(doc, sig, b.Bytes)
			if err != nil {
				return localError(codes.DataLoss, fmt.Errorf("%s: %w", dir, err))
			}
			return a.reportTranscript(t, b.Bytes, dir)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "transcript directory (from ceremony init --transcript-out)")
	cmd.Flags().StringVar(&pubFile, "pubkey", "", "audit public key PEM; default DIR/audit-pubkey.pem")
	return cmd
}

// reportTranscript prints a verified transcript; unsafe key attributes are
// an error after printing.
func (a *app) reportTranscript(t *Transcript, auditDER []byte, dir string) error {
	var unsafe []string
	for _, k := range t.Keys {
		if !k.Attributes.Safe() {
			unsafe = append(unsafe, fmt.Sprintf("%s v%d", k.Name, k.Version))
		}
	}
	err := a.emitValue(map[string]any{"verified": true, "dir": dir, "audit_key_fingerprint": fingerprintDER(auditDER), "transcript": t},
		func(w io.Writer) {
			fmt.Fprintf(w, "signature:  OK (audit key %s)\n", fingerprintDER(auditDER))
			fmt.Fprintf(w, "instance:   %s\ncreated:    %s\n", t.Instance, t.Created.UTC().Format(time.RFC3339))
			dev := ""
			if t.Dev {
				dev = " (DEVELOPMENT: M=1 allowed)"
			}
			fmt.Fprintf(w, "threshold:  %d of %d%s\n", t.Threshold, len(t.Officers), dev)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "OFFICER\tTYPE\tFINGERPRINT")
			for _, o := range t.Officers {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", o.Name, keyTypeName(o.PublicKey), o.Fingerprint)
			}
			_ = tw.Flush()
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY\tPURPOSE\tVERSION\tHSM ID\tHSM ATTRIBUTES")
			for _, k := range t.Keys {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", k.Name, k.Purpose, k.Version, k.HSMID, formatTranscriptAttrs(k.Attributes))
			}
			_ = tw.Flush()
			fmt.Fprintf(w, "grants:     %d\nbudgets:    %d\nsteps:      %d\n", len(t.Grants), len(t.Budgets), len(t.Steps))
		})
	if err != nil {
		return err
	}
	if len(unsafe) > 0 {
		return localError(codes.DataLoss, fmt.Errorf("%w: unsafe HSM attributes on %s", errTranscriptContent, strings.Join(unsafe, ", ")))
	}
	return nil
}

func formatTranscriptAttrs(at TranscriptAttr) string {
	if at.Safe() && len(at.Unverified) == 0 {
		return "ok (token, private, sensitive, never extractable, local, not modifiable)"
	}
	if at.Safe() {
		return "ok, UNVERIFIED " + strings.Join(at.Unverified, ",") + " (the HSM's vendor profile cannot set them)"
	}
	var bad []string
	for _, c := range []struct {
		bad  bool
		name string
	}{
		{!at.Token, "not-token"}, {!at.Private, "not-private"}, {!at.Sensitive || !at.AlwaysSensitive, "not-always-sensitive"},
		{at.Extractable || !at.NeverExtractable, "extractable"}, {!at.Local, "not-local"}, {at.Modifiable, "modifiable"},
		{slices.Contains(at.Unverified, "extractable_enforced"), "extraction-not-enforced-by-hsm"},
	} {
		if c.bad {
			bad = append(bad, c.name)
		}
	}
	out := "WARNING " + strings.Join(bad, ",")
	if len(at.Unverified) > 0 {
		out += " UNVERIFIED " + strings.Join(at.Unverified, ",")
	}
	return out
}

// matchDeclared checks the transcript records what the config declared:
// the same officers and keys, M and dev flag.
func matchDeclared(t *Transcript, req *custodyv1.InitCeremonyRequest) error {
	if t.Threshold != int(req.GetThreshold()) || t.Dev != req.GetAllowDev() {
		return fmt.Errorf("threshold %d (dev %v), declared %d (dev %v)", t.Threshold, t.Dev, req.GetThreshold(), req.GetAllowDev())
	}
	want := map[string]string{}
	for _, o := range req.GetOfficers() {
		want[o.GetName()] = fingerprintDER(o.GetPublicKeyDer())
	}
	if len(t.Officers) != len(want) {
		return fmt.Errorf("%d officers, declared %d", len(t.Officers), len(want))
	}
	for _, o := range t.Officers {
		if want[o.Name] != o.Fingerprint {
			return fmt.Errorf("officer %q has fingerprint %s, declared %s", o.Name, o.Fingerprint, want[o.Name])
		}
	}
	var got, declared []string
	for _, k := range t.Keys {
		got = append(got, k.Name)
	}
	for _, k := range req.GetKeys() {
		declared = append(declared, k.GetName())
	}
	sort.Strings(got)
	sort.Strings(declared)
	if strings.Join(got, "\x00") != strings.Join(declared, "\x00") {
		return fmt.Errorf("keys %v, declared %v", got, declared)
	}
	return nil
}

// prepareTranscriptDir creates dir if needed and refuses one that already
// holds a transcript.
func prepareTranscriptDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return localError(codes.FailedPrecondition, err)
	}
	for _, f := range []string{fileTranscriptJSON, fileTranscriptText, fileTranscriptSig, fileAuditPubKey} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return localError(codes.AlreadyExists, fmt.Errorf("%s already holds %s; refusing to overwrite a transcript", dir, f))
		}
	}
	return nil
}

// writeTranscript writes the four transcript files. transcript.sig is the
// raw DER signature, so openssl can check it too:
//
//	openssl dgst -sha256 -verify audit-pubkey.pem -signature transcript.sig transcript.json
func writeTranscript(dir string, tr *custodyv1.CeremonyTranscript) error {
	files := []struct {
		name string
		data []byte
	}{
		{fileTranscriptJSON, tr.GetJson()},
		{fileTranscriptText, []byte(tr.GetText())},
		{fileTranscriptSig, tr.GetSignature()},
		{fileAuditPubKey, pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: tr.GetAuditPublicKeyDer()})},
	}
	for _, f := range files {
		if err := createFile(filepath.Join(dir, f.name), f.data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
