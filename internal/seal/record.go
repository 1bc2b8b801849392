package seal

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/custodyhq/custody/internal/quorum"
)

// RecordFormat is the value of Record.Format this version reads and writes.
const RecordFormat = "custody-seal-record-v1"

// Record is everything a sealed custodyd needs before it can log in: the
// encrypted shares of the current PIN, who holds them, and the audit
// public key (to open the audit log and record refused submissions
// before login). It is stored where a sealed custodyd can read it without
// the HSM; nothing in it is secret. Pre-login it is trusted only as far as
// this: a swapped record can make an unseal fail (a denial of service root
// has anyway) but yields no share — shares are encrypted to officers and
// only ever sent encrypted to this process's ephemeral key. After login
// custodyd checks it against its HSM-authenticated copy.
type Record struct {
	Format    string     `json:"format"`
	VaultID   []byte     `json:"vault_id"`
	Epoch     uint64     `json:"epoch"`
	Threshold int        `json:"threshold"`
	AuditKey  []byte     `json:"audit_key"`
	Created   time.Time  `json:"created"`
	Shares    []Envelope `json:"shares"`
}

// Ref names the record's PIN.
func (r *Record) Ref() VaultRef { return VaultRef{VaultID: r.VaultID, Epoch: r.Epoch} }

// Validate checks the record's shape (not its cryptography).
func (r *Record) Validate() error {
	switch {
	case r.Format != RecordFormat:
		return fmt.Errorf("%w: seal record format %q, want %q", ErrFormat, r.Format, RecordFormat)
	case len(r.VaultID) != vaultIDSize || r.Epoch == 0:
		return fmt.Errorf("%w: seal record vault id or epoch", ErrFormat)
	case r.Threshold < 2 || r.Threshold > len(r.Shares):
		return fmt.Errorf("%w: seal record threshold %d of %d", ErrFormat, r.Threshold, len(r.Shares))
	}
	idx := map[int]bool{}
	fps := map[string]bool{}
	for i, e := range r.Shares {
		fp := e.OfficerFingerprint()
		if e.Index < 1 || e.Index > 255 || idx[e.Index] || fps[fp] || e.Officer == "" || len(e.Commitment) != 32 || len(e.Sealed) == 0 {
			return fmt.Errorf("%w: seal record shares[%d]", ErrFormat, i)
		}
		idx[e.Index], fps[fp] = true, true
	}
	return nil
}

// Encode returns the record's JSON.
func (r *Record) Encode() ([]byte, error) { return json.Marshal(r) }

// ParseRecord decodes and validates a record strictly.
func ParseRecord(b []byte) (*Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: seal record: %v", ErrFormat, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: seal record: trailing data", ErrFormat)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Holder returns the envelope of the officer whose signing key has
// fingerprint fp.
func (r *Record) Holder(fp string) (Envelope, bool) {
	for _, e := range r.Shares {
		if e.OfficerFingerprint() == fp {
			return e, true
		}
	}
	return Envelope{}, false
}

// PIN sources, as the transcript, status and metrics name them.
const (
	SourceOfficers = "officers"
	SourcePINFile  = "pin_file"
	SourcePINEnv   = "pin_env"
)

// Transcript is the record's section of the signed ceremony transcript:
// who holds which share, by fingerprint and commitment, never the share.
func (r *Record) Transcript() quorum.TranscriptSeal {
	t := quorum.TranscriptSeal{PINSource: SourceOfficers, VaultID: hex.EncodeToString(r.VaultID), Epoch: r.Epoch,
		Threshold: r.Threshold, Suite: Suite}
	for _, e := range r.Shares {
		t.Shares = append(t.Shares, quorum.TranscriptShare{Index: e.Index, Officer: e.Officer,
			OfficerFingerprint: e.OfficerFingerprint(), ShareKeyFingerprint: e.ShareKeyFingerprint(),
			Commitment: hex.EncodeToString(e.Commitment)})
	}
	return t
}
