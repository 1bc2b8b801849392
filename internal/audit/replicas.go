package audit

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// Replicas. Each custodyd replica of a vault keeps its own chain, every
// record naming its replica (Record.Replica) and every checkpoint signed
// under its replica id (Checkpoint.InstanceID), and publishes its newest
// signed checkpoint to the shared store. VerifyReplicas checks the chains
// of a whole cluster together against those published checkpoints.

// PublishedPrefix is where in the vault's store each replica publishes its
// newest signed checkpoint, under its replica id.
const PublishedPrefix = "audit/checkpoints/"

// ChainResult is one replica's chain as VerifyReplicas found it.
type ChainResult struct {
	// Dir is the directory verified ("" for a replica whose chain was not
	// given).
	Dir string
	// Replica is the replica whose chain it is.
	Replica string
	// Published is the newest checkpoint the replica published, if any;
	// the chain was verified against it.
	Published *Checkpoint
	// Report is what Verify found (nil for a missing chain).
	Report *Report
	// Err is the first problem (a *VerifyError, or an I/O error), nil when
	// the chain verified.
	Err error
}

// ReplicaOf names the replica whose chain dir holds: the replica of its
// newest record that names one, else the instance of its newest checkpoint
// ("" when neither says).
func ReplicaOf(dir string) (string, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return "", err
	}
	for i := len(segs) - 1; i >= 0; i-- {
		last, _, _, _, err := lastRecord(filepath.Join(dir, segs[i].name))
		if err != nil {
			return "", err
		}
		if last != nil {
			if last.Replica != "" {
				return last.Replica, nil
			}
			break
		}
	}
	cps, err := ReadCheckpoints(dir)
	if err != nil {
		return "", err
	}
	if len(cps) > 0 {
		return cps[len(cps)-1].InstanceID, nil
	}
	return "", nil
}

// VerifyReplicas verifies the chains of several replicas of one vault
// together, with only the audit public key. Each directory is one
// replica's chain (two directories of one replica are refused). Each chain
// is verified as Verify does, against the newest checkpoint its replica
// published (published: from the store, or an export of it; a chain that
// ends before it, or differs at its sequence, is KindTruncated), and every
// record must name the chain's replica. A replica that published a
// checkpoint but whose chain is not among dirs is a result with Err of
// KindMissing. The error returned is the first problem found (nil when
// every chain verified); the results cover every chain either way.
func VerifyReplicas(dirs []string, pub crypto.PublicKey, published []Checkpoint) ([]ChainResult, error) {
	newest := map[string]Checkpoint{}
	for _, cp := range published {
		if cp.Verify(pub) != nil {
			return nil, &VerifyError{Seq: cp.Seq, Segment: "published checkpoint of " + cp.InstanceID, Kind: KindBadSignature,
				Reason: "published checkpoint signature does not verify"}
		}
		if old, ok := newest[cp.InstanceID]; !ok || cp.Seq > old.Seq {
			newest[cp.InstanceID] = cp
		}
	}
	var out []ChainResult
	seen := map[string]string{}
	for _, dir := range dirs {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return out, fmt.Errorf("%s is not a directory", dir)
		}
		replica, err := ReplicaOf(dir)
		if err != nil {
			return out, fmt.Errorf("read %s: %w", dir, err)
		}
		if replica == "" {
			replica = filepath.Base(filepath.Clean(dir))
		}
		if other, dup := seen[replica]; dup {
			return out, fmt.Errorf("%s and %s both hold the chain of replica %q", other, dir, replica)
		}
		seen[replica] = dir
		res := ChainResult{Dir: dir, Replica: replica}
		var anchor *Checkpoint
		if cp, ok := newest[replica]; ok {
			res.Published, anchor = &cp, &cp
		}
		res.Report, res.Err = verify(dir, pub, anchor, span{replica: replica})
		out = append(out, res)
	}
	var missing []string
	for r := range newest {
		if _, ok := seen[r]; !ok {
			missing = append(missing, r)
		}
	}
	sort.Strings(missing)
	for _, r := range missing {
		cp := newest[r]
		out = append(out, ChainResult{Replica: r, Published: &cp, Err: &VerifyError{Seq: cp.Seq, Segment: "replica " + r, Kind: KindMissing,
			Reason: fmt.Sprintf("replica %q published checkpoint %d of its chain, but its audit directory was not given", r, cp.Seq)}})
	}
	for _, res := range out {
		if res.Err != nil {
			return out, res.Err
		}
	}
	return out, nil
}

// ReplicaRange is the part of one replica's chain a transparency report
// covers.
type ReplicaRange struct {
	Replica  string `json:"replica"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	Head     Digest `json:"head"`
	Records  uint64 `json:"records"`
}

// BuildReplicasReport is BuildReport over the chains of several replicas
// (verify them together first: VerifyReplicas): the counts cover every
// replica, and Replicas binds the report to each chain's range and head.
// Its own FirstSeq, LastSeq and Head are left zero (sequence numbers are
// per chain).
func BuildReplicasReport(dirs []string, since, until time.Time, methods []string, counts func(method string) bool) (*TransparencyReport, error) {
	var out *TransparencyReport
	keys, ids, cases := map[string]*UseCount{}, map[string]*UseCount{}, map[string]uint64{}
	add := func(m map[string]*UseCount, cs []UseCount) {
		for _, c := range cs {
			if m[c.Name] == nil {
				m[c.Name] = &UseCount{Name: c.Name}
			}
			m[c.Name].Operations += c.Operations
			m[c.Name].Denied += c.Denied
			m[c.Name].Disclosures += c.Disclosures
		}
	}
	for _, dir := range dirs {
		rep, err := BuildReport(dir, since, until, methods, counts)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		replica := ""
		if len(rep.Replicas) == 1 {
			replica = rep.Replicas[0].Replica
		} else if replica, err = ReplicaOf(dir); err != nil {
			return nil, err
		}
		if out == nil {
			out = &TransparencyReport{Since: rep.Since, Until: rep.Until, Methods: rep.Methods}
		}
		out.Records += rep.Records
		out.Operations += rep.Operations
		out.Disclosures += rep.Disclosures
		add(keys, rep.Keys)
		add(ids, rep.Identities)
		for _, c := range rep.Cases {
			cases[c.CaseRef] += c.Uses
		}
		out.Replicas = append(out.Replicas, ReplicaRange{Replica: replica, FirstSeq: rep.FirstSeq, LastSeq: rep.LastSeq, Head: rep.Head, Records: rep.Records})
	}
	if out == nil {
		return nil, errors.New("audit: no directories to report on")
	}
	slices.SortFunc(out.Replicas, func(a, b ReplicaRange) int { return strings.Compare(a.Replica, b.Replica) })
	out.Keys, out.Identities = sortedCounts(keys), sortedCounts(ids)
	out.Cases = []CaseCount{}
	for c, n := range cases {
		out.Cases = append(out.Cases, CaseCount{CaseRef: c, Uses: n})
	}
	sort.Slice(out.Cases, func(i, j int) bool { return out.Cases[i].CaseRef < out.Cases[j].CaseRef })
	return out, nil
}

// ReadDir delivers the records of a log directory that match f, in order,
// without opening it as a Log (a copy, or the log of a replica that is
// stopped or was killed); it stops at an unterminated final line. It
// verifies nothing: Verify (or VerifyReplicas) first.
func ReadDir(ctx context.Context, dir string, f Filter, fn func(Record) error) error {
	return scan(ctx, dir, &cursor{}, math.MaxUint64, func(r *Record) error {
		if !f.match(r) {
			return nil
		}
		return fn(*r)
	})
}
