package audit

import (
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"time"
)

// UseCount counts uses of one key or by one identity in a TransparencyReport.
type UseCount struct {
	Name        string `json:"name"`
	Operations  uint64 `json:"operations"`  // successful calls of the reported methods
	Denied      uint64 `json:"denied"`      // denied calls of the reported methods
	Disclosures uint64 `json:"disclosures"` // successful calls carrying a case reference
}

// CaseCount counts the successful uses made under one disclosure order.
type CaseCount struct {
	CaseRef string `json:"case_ref"`
	Uses    uint64 `json:"uses"`
}

// TransparencyReport is a publishable summary of a time window of the log:
// how often each key was used to decrypt or unwrap, by whom, and how often
// under disclosure orders. It is bound to the log by the sequence range and
// head hash it covers, and can be signed with the audit key. Build it from a
// log that Verify accepted.
type TransparencyReport struct {
	Since       time.Time   `json:"since"`
	Until       time.Time   `json:"until"`
	Methods     []string    `json:"methods"`
	FirstSeq    uint64      `json:"first_seq"`
	LastSeq     uint64      `json:"last_seq"`
	Head        Digest      `json:"head"`
	Records     uint64      `json:"records"`
	Operations  uint64      `json:"operations"`
	Disclosures uint64      `json:"disclosures"`
	Keys        []UseCount  `json:"keys"`
	Identities  []UseCount  `json:"identities"`
	Cases       []CaseCount `json:"cases"`
	// Replicas names the replica chains the report covers and binds it to
	// each one's range and head (one entry for a replica's own report,
	// several for BuildReplicasReport; none for a log whose records name
	// no replica).
	Replicas  []ReplicaRange `json:"replicas,omitempty"`
	Signature []byte         `json:"signature,omitempty"`
}

// BuildReport summarises the records of dir with since <= time < until (a
// zero until means no upper bound). counts decides which records' methods
// are operations to count (the server's declaration of every method that
// yields plaintext or a data key, batch items "Name[i]" included); methods
// names that set in the report. Any record with a case reference and
// outcome ok counts as a disclosure use, whatever its method.
func BuildReport(dir string, since, until time.Time, methods []string, counts func(method string) bool) (*TransparencyReport, error) {
	rep := &TransparencyReport{Since: since.UTC().Round(0), Until: until.UTC().Round(0)}
	rep.Methods = append([]string{}, methods...)
	sort.Strings(rep.Methods)
	keys, ids, cases := map[string]*UseCount{}, map[string]*UseCount{}, map[string]uint64{}
	get := func(m map[string]*UseCount, name string) *UseCount {
		if m[name] == nil {
			m[name] = &UseCount{Name: name}
		}
		return m[name]
	}
	f := Filter{Since: since, Until: until}
	replica := ""
	err := scan(context.Background(), dir, &cursor{}, math.MaxUint64, func(r *Record) error {
		if !f.match(r) {
			return nil
		}
		if rep.Records == 0 {
			rep.FirstSeq = r.Seq
		}
		rep.Records++
		rep.LastSeq, rep.Head = r.Seq, r.Hash
		if r.Replica != "" {
			replica = r.Replica
		}
		disclosure := r.CaseRef != "" && r.Outcome == OutcomeOK
		if !counts(r.Method) && !disclosure {
			return nil
		}
		k, id := get(keys, r.Key), get(ids, r.Identity)
		if counts(r.Method) {
			switch r.Outcome {
			case OutcomeOK:
				k.Operations++
				id.Operations++
				rep.Operations++
			case OutcomeDenied:
				k.Denied++
				id.Denied++
			}
		}
		if disclosure {
			k.Disclosures++
			id.Disclosures++
			rep.Disclosures++
			cases[r.CaseRef]++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rep.Keys, rep.Identities = sortedCounts(keys), sortedCounts(ids)
	rep.Cases = []CaseCount{}
	for c, n := range cases {
		rep.Cases = append(rep.Cases, CaseCount{CaseRef: c, Uses: n})
	}
	sort.Slice(rep.Cases, func(i, j int) bool { return rep.Cases[i].CaseRef < rep.Cases[j].CaseRef })
	if replica != "" {
		rep.Replicas = []ReplicaRange{{Replica: replica, FirstSeq: rep.FirstSeq, LastSeq: rep.LastSeq, Head: rep.Head, Records: rep.Records}}
	}
	return rep, nil
}

func sortedCounts(m map[string]*UseCount) []UseCount {
	out := make([]UseCount, 0, len(m))
	for _, c := range m {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// canonical is the signed form: the report's JSON (fields in declaration
// order, slices sorted) without its signature, after a domain tag.
func (r *TransparencyReport) canonical() ([]byte, error) {
	c := *r
	c.Signature = nil
	b, err := json.Marshal(&c)
	if err != nil {
		return nil, err
	}
	return append([]byte("custody.audit.transparency.v1\n"), b...), nil
}

// SignReport signs the report with s (the audit key) and stores the signature.
func (r *TransparencyReport) SignReport(s crypto.Signer) error {
	msg, err := r.canonical()
	if err != nil {
		return err
	}
	sig, err := sign(s, msg)
	if err != nil {
		return err
	}
	r.Signature = sig
	return nil
}

// VerifyReport checks the report's signature; it returns an error wrapping
// ErrBadSignature if the report was changed after signing.
func (r *TransparencyReport) VerifyReport(pub crypto.PublicKey) error {
	msg, err := r.canonical()
	if err != nil {
		return err
	}
	if err := verifySig(pub, msg, r.Signature); err != nil {
		return fmt.Errorf("audit: transparency report: %w", err)
	}
	return nil
}
