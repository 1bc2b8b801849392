package quorum

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/custodyhq/custody/internal/custody"
	"github.com/custodyhq/custody/internal/names"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/strictjson"
)

// Transcript is the signed record of the initial key ceremony (schema:
// docs/ceremony.md, appendix). custodyd produces exactly this JSON and signs
// its bytes with the HSM audit key; VerifyTranscript decodes it strictly.
type Transcript struct {
	Format    string              `json:"format"`
	Instance  string              `json:"instance"`
	Created   time.Time           `json:"created"`
	Dev       bool                `json:"dev"`
	Threshold int                 `json:"threshold"`
	Officers  []TranscriptOfficer `json:"officers"`
	Keys      []TranscriptKey     `json:"keys"`
	Grants    []policy.Grant      `json:"grants"`
	Budgets   []TranscriptBudget  `json:"budgets"`
	Steps     []TranscriptStep    `json:"steps"`
	// Seal records where the HSM PIN comes from after the ceremony and,
	// for a sealed vault, who holds which share (absent in transcripts
	// made before sealed start existed).
	Seal *TranscriptSeal `json:"seal,omitempty"`
	// Trust is what the ceremony fixed about trust: client CAs, roles,
	// governance parameters, production (absent in transcripts made
	// before it was fixed).
	Trust *CeremonyTrust `json:"trust,omitempty"`
}

// TranscriptSeal is the PIN's section of the transcript.
type TranscriptSeal struct {
	// PINSource is "officers" (the installer's PIN was replaced by a
	// random one split among the officers), or "pin_file"/"pin_env" (the
	// PIN stays on the host: an explicitly weaker choice).
	PINSource string `json:"pin_source"`
	// VaultID (hex) and Epoch name the PIN the shares are of.
	VaultID   string            `json:"vault_id,omitempty"`
	Epoch     uint64            `json:"epoch,omitempty"`
	Threshold int               `json:"threshold,omitempty"`
	Suite     string            `json:"suite,omitempty"`
	Shares    []TranscriptShare `json:"shares,omitempty"`
}

// TranscriptShare says who holds one share: fingerprints and the share's
// commitment (SHA-256 over domain, vault id, epoch, index and share), never
// the share.
type TranscriptShare struct {
	Index               int    `json:"index"`
	Officer             string `json:"officer"`
	OfficerFingerprint  string `json:"officer_fingerprint"`
	ShareKeyFingerprint string `json:"share_key_fingerprint"`
	Commitment          string `json:"commitment"`
}

// TranscriptFormat is the value of Transcript.Format this version writes
// and reads.
const TranscriptFormat = "custody-ceremony-transcript-v1"

// TranscriptOfficer is one officer as declared.
type TranscriptOfficer struct {
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
	PublicKey   []byte `json:"public_key"`
}

// TranscriptKey is one key created, with the attributes read back from the HSM.
type TranscriptKey struct {
	Name       string         `json:"name"`
	Purpose    string         `json:"purpose"`
	Version    int            `json:"version"`
	HSMID      string         `json:"hsm_id"`
	Attributes TranscriptAttr `json:"attributes"`
}

// TranscriptAttr are the PKCS#11 attributes read back for a key, judged by
// the one custody rule (package custody): Safe reports a key in custody;
// Unverified lists what its token could not be shown to have (see
// docs/hsm-compatibility.md), which the transcript says rather than passing
// silently.
type TranscriptAttr = custody.Attrs

// TranscriptBudget is one budget installed; Window is a Go duration string.
type TranscriptBudget struct {
	Identity string  `json:"identity"`
	Key      string  `json:"key"`
	Rate     float64 `json:"rate"`
	Burst    int     `json:"burst"`
	Volume   int64   `json:"volume"`
	Window   string  `json:"window"`
}

// TranscriptStep is one step of the ceremony, in order.
type TranscriptStep struct {
	N      int       `json:"n"`
	Time   time.Time `json:"time"`
	Action string    `json:"action"`
	Detail string    `json:"detail"`
}

var (
	// ErrTranscriptSignature reports a transcript whose signature does not
	// verify under the audit key.
	ErrTranscriptSignature = errors.New("transcript signature does not verify")
	// ErrTranscriptContent reports a verified transcript that is malformed
	// or records something unsafe.
	ErrTranscriptContent = errors.New("transcript content")
)

// VerifyTranscript checks sig (ASN.1 ECDSA P-256 over SHA-256(doc)) under
// the audit key (PKIX DER), decodes the transcript strictly and checks each
// officer's fingerprint against its key. It does not judge key attributes;
// callers report those with TranscriptAttr.Safe.
func VerifyTranscript(doc, sig, auditDER []byte) (*Transcript, error) {
	pub, err := x509.ParsePKIXPublicKey(auditDER)
	if err != nil {
		return nil, fmt.Errorf("audit public key: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("audit public key: want ECDSA P-256, got %T", pub)
	}
	h := sha256.Sum256(doc)
	if !ecdsa.VerifyASN1(ec, h[:], sig) {
		return nil, ErrTranscriptSignature
	}
	var t Transcript
	if err := strictjson.Unmarshal(doc, &t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTranscriptContent, err)
	}
	if t.Format != TranscriptFormat {
		return nil, fmt.Errorf("%w: format %q, want %q", ErrTranscriptContent, t.Format, TranscriptFormat)
	}
	for i, o := range t.Officers {
		if got := (Officer{Name: o.Name, PublicKey: o.PublicKey}).Fingerprint(); got != o.Fingerprint {
			return nil, fmt.Errorf("%w: officers[%d].fingerprint: does not match its public key", ErrTranscriptContent, i)
		}
	}
	return &t, nil
}

// Text renders the transcript for humans: the same content as the JSON,
// which alone is signed.
func (t *Transcript) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Custody key ceremony transcript (%s)\n", t.Format)
	fmt.Fprintf(&b, "instance:  %s\ncreated:   %s\n", t.Instance, t.Created.UTC().Format(time.RFC3339))
	dev := ""
	if t.Dev {
		dev = " (DEVELOPMENT vault: M=1 allowed)"
	}
	fmt.Fprintf(&b, "quorum:    %d of %d officers%s\n\n", t.Threshold, len(t.Officers), dev)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OFFICER\tSHA-256 FINGERPRINT")
	for _, o := range t.Officers {
		fmt.Fprintf(tw, "%s\t%s\n", o.Name, o.Fingerprint)
	}
	_ = tw.Flush()
	b.WriteString("\n")
	tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tPURPOSE\tVERSION\tHSM ID\tTOKEN\tPRIVATE\tSENSITIVE\tALWAYS_SENSITIVE\tEXTRACTABLE\tNEVER_EXTRACTABLE\tLOCAL\tMODIFIABLE")
	var unverified []string
	for _, k := range t.Keys {
		a := k.Attributes
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%t\t%t\t%t\t%t\t%t\t%t\t%t\t%t\n", k.Name, k.Purpose, k.Version, k.HSMID,
			a.Token, a.Private, a.Sensitive, a.AlwaysSensitive, a.Extractable, a.NeverExtractable, a.Local, a.Modifiable)
		if len(a.Unverified) > 0 {
			unverified = append(unverified, fmt.Sprintf("  %s v%d: %s", k.Name, k.Version, strings.Join(a.Unverified, ", ")))
		}
	}
	_ = tw.Flush()
	if len(unverified) > 0 {
		b.WriteString("\nUNVERIFIED on this HSM (its vendor profile cannot set them, or it let a non-extractable key out):\n")
		b.WriteString(strings.Join(unverified, "\n") + "\n")
	}
	b.WriteString("\ngrants:\n")
	for _, g := range t.Grants {
		ops := make([]string, len(g.Operations))
		for i, op := range g.Operations {
			ops[i] = string(op)
		}
		pin := "not pinned"
		if g.SPKI != "" {
			pin = "pinned to sha256:" + g.SPKI
		}
		fmt.Fprintf(&b, "  %s: %s may %s on %s (context constraint: %d pairs, plaintext data keys: %t, key %s)\n",
			g.ID, g.Identity, strings.Join(ops, ","), g.Key, len(g.ContextMatch), g.AllowPlaintext, pin)
	}
	b.WriteString("\nbudgets:\n")
	for _, bu := range t.Budgets {
		who := bu.Identity
		if who == "" {
			who = "(all identities)"
		}
		fmt.Fprintf(&b, "  %s on %s: rate %g/s, burst %d, %d per %s\n", who, bu.Key, bu.Rate, bu.Burst, bu.Volume, bu.Window)
	}
	if t.Seal != nil {
		b.WriteString("\nhsm pin:\n")
		switch t.Seal.PINSource {
		case "officers":
			fmt.Fprintf(&b, "  replaced by a random PIN split %d of %d among the officers (vault %s, epoch %d; %s)\n",
				t.Seal.Threshold, len(t.Seal.Shares), t.Seal.VaultID, t.Seal.Epoch, t.Seal.Suite)
			tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "  SHARE\tOFFICER\tSHARE KEY FINGERPRINT\tCOMMITMENT")
			for _, s := range t.Seal.Shares {
				fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\n", s.Index, s.Officer, s.ShareKeyFingerprint, s.Commitment)
			}
			_ = tw.Flush()
		default:
			fmt.Fprintf(&b, "  read from %s on the vault's host (NOT split among the officers: root on the host can use the HSM)\n", t.Seal.PINSource)
		}
	}
	if tr := t.Trust; tr != nil {
		b.WriteString("\ntrust fixed by this ceremony (a config that disagrees is refused at start; a set-trust proposal changes it):\n")
		fmt.Fprintf(&b, "  production vault:  %t\n", tr.Production)
		fmt.Fprintf(&b, "  time-lock:         %s\n  proposal ttl:      %s\n", tr.TimeLock, tr.ProposalTTL)
		fmt.Fprintf(&b, "  freeze:            %d refusals within %s\n  quorum required:   %t\n", tr.Freeze.Refusals, tr.Freeze.Within, tr.QuorumRequired)
		b.WriteString("  client CAs (SHA-256 of the certificate):\n")
		for _, fp := range tr.ClientCAs {
			fmt.Fprintf(&b, "    %s\n", fp)
		}
		b.WriteString("  identities and roles:\n")
		ids := make([]string, 0, len(tr.Roles))
		for id := range tr.Roles {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			fmt.Fprintf(&b, "    %-8s %s\n", names.Escape(string(tr.Roles[id])), names.Escape(id))
		}
	}
	b.WriteString("\nsteps:\n")
	for _, s := range t.Steps {
		fmt.Fprintf(&b, "  %3d  %s  %-16s %s\n", s.N, s.Time.UTC().Format(time.RFC3339), s.Action, s.Detail)
	}
	return b.String()
}
