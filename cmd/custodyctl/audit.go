package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/strictjson"
)

// The audit commands. verify and report verify work offline on files with
// only the audit public key (internal/audit is pure Go, no HSM); the others
// read the log through custodyd's AuditService, which needs the auditor (or
// officer) role.

func (a *app) auditCommand() *cobra.Command {
	c := groupCommand("audit", "Read and verify the tamper-evident audit log",
		a.auditVerifyCommand(), a.auditTailCommand(), a.auditExportCommand(),
		a.auditCheckpointCommand(), a.auditPubkeyCommand(), a.auditReportCommand(), a.auditDigestCommand(),
		a.auditReplicasCommand())
	c.Long = `Every request custodyd serves is one hash-chained audit record; checkpoints
of the chain are signed by a non-extractable HSM audit key. "audit verify" and
"audit report verify" run offline with only the audit public key; the other
commands call custodyd's AuditService (auditor or officer role).`
	return c
}

func (a *app) auditClient() (custodyv1.AuditServiceClient, error) {
	conn, err := a.connect()
	if err != nil {
		return nil, err
	}
	return custodyv1.NewAuditServiceClient(conn), nil
}

// ---- audit verify (offline) ----

// verifyResult is the --output json form of a verification.
type verifyResult struct {
	OK                 bool              `json:"ok"`
	Dir                string            `json:"dir"`
	Segments           int               `json:"segments"`
	Records            uint64            `json:"records"`
	FirstSeq           uint64            `json:"first_seq"`
	LastSeq            uint64            `json:"last_seq"`
	Head               audit.Digest      `json:"head"`
	Checkpoints        int               `json:"checkpoints"`
	CheckpointsMatched int               `json:"checkpoints_matched"`
	CheckpointsPruned  int               `json:"checkpoints_pruned"`
	LastCheckpoint     *audit.Checkpoint `json:"last_checkpoint,omitempty"`
	Anchors            int               `json:"anchors"`
	AnchorsChecked     int               `json:"anchors_checked"`
	PrunedBefore       uint64            `json:"pruned_before,omitempty"`
	TornTails          []audit.TornTail  `json:"torn_tails,omitempty"`
	Unanchored         uint64            `json:"unanchored_records"`
	Error              *verifyFailure    `json:"error,omitempty"`
}

type verifyFailure struct {
	Kind    audit.Kind `json:"kind"`
	Seq     uint64     `json:"seq"`
	Segment string     `json:"segment"`
	Line    int        `json:"line"`
	Reason  string     `json:"reason"`
}

func (a *app) auditVerifyCommand() *cobra.Command {
	var dirs []string
	var pubFile, anchorFile, publishedFile string
	var ef etcdFlags
	cmd := &cobra.Command{
		Use:   "verify --dir DIR [--dir DIR ...] --pubkey FILE [--anchor FILE] [--checkpoints FILE | --etcd-endpoints URLS ...]",
		Short: "Verify a copy of the audit log offline with only the audit public key",
		Long: `Checks every record's hash and chain link, every checkpoint's and the prune
marker's signature, and every checkpoint against the records. With --anchor,
also checks the checkpoints in FILE (JSON lines, as written by the file sink or
"audit checkpoint --out"), kept off-box: a log that ends before an anchor, or
differs from it, was truncated or rewritten. Prints a summary; on the first
bad record prints its kind (modified, deleted, inserted, reordered, truncated,
bad-signature, checkpoint-mismatch), sequence number, file and line, and exits 1.
Nothing is modified.

A cluster: give every replica's directory (--dir once per replica) and the
checkpoints the replicas published to the vault's etcd store, read from etcd
(--etcd-endpoints and its TLS flags) or from a file "audit replicas --out"
wrote (--checkpoints). Each chain is verified against its replica's newest
published checkpoint; a replica that published one but whose directory is
not given is reported missing, a chain cut before it truncated.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(dirs) == 0 || pubFile == "" {
				return usageErrorf("--dir DIR and --pubkey FILE are required")
			}
			pub, err := readPublicKey(pubFile)
			if err != nil {
				return err
			}
			if len(dirs) > 1 || publishedFile != "" || ef.set() {
				if anchorFile != "" {
					return usageErrorf("--anchor verifies one directory; with several, the replicas' published checkpoints are the anchors")
				}
				published, err := readPublished(cmd.Context(), publishedFile, ef)
				if err != nil {
					return err
				}
				return a.verifyReplicas(dirs, pub, published)
			}
			dir := dirs[0]
			var anchors []anchorEntry
			if anchorFile != "" {
				if anchors, err = readAnchors(anchorFile); err != nil {
					return err
				}
			}
			if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
				return localError(codes.NotFound, fmt.Errorf("--dir %s is not a directory", dir))
			}
			res, verr := verifyWithAnchors(dir, pub, anchorFile, anchors)
			if err := a.emitValue(res, func(w io.Writer) { printVerify(w, res) }); err != nil {
				return err
			}
			return verr
		},
	}
	cmd.Flags().StringArrayVar(&dirs, "dir", nil, "audit log directory (a copy is fine); once per replica for a cluster")
	cmd.Flags().StringVar(&pubFile, "pubkey", "", "audit public key file (PEM PUBLIC KEY or DER), from \"audit pubkey\"")
	cmd.Flags().StringVar(&anchorFile, "anchor", "", "file of checkpoints kept off-box (JSON lines)")
	cmd.Flags().StringVar(&publishedFile, "checkpoints", "", "the replicas' published checkpoints (JSON lines, from \"audit replicas --out\")")
	ef.add(cmd)
	return cmd
}

// anchorEntry is one checkpoint of an --anchor file and its 1-based line.
type anchorEntry struct {
	cp   audit.Checkpoint
	line int
}

// verifyWithAnchors runs Verify against the newest anchor, then against
// every other anchor that checkpoints.log does not hold identically (those
// were already matched against the records by the first pass). The error is
// a localError naming the first problem; a problem found through an anchor
// names the anchor file and line.
func verifyWithAnchors(dir string, pub crypto.PublicKey, anchorFile string, anchors []anchorEntry) (*verifyResult, error) {
	sort.SliceStable(anchors, func(i, j int) bool { return anchors[i].cp.Seq > anchors[j].cp.Seq })
	var first *audit.Checkpoint
	if len(anchors) > 0 {
		first = &anchors[0].cp
	}
	rep, err := audit.Verify(dir, pub, first)
	res := resultOf(dir, rep, len(anchors))
	if err != nil {
		if first != nil {
			err = atAnchor(err, anchorFile, anchors[0].line)
		}
		return res, failed(res, err)
	}
	if first != nil && rep.AnchorChecked {
		res.AnchorsChecked++
	}
	if len(anchors) > 1 {
		inLog := map[string]bool{}
		cps, err := audit.ReadCheckpoints(dir)
		if err != nil {
			return res, localError(codes.Unavailable, fmt.Errorf("read checkpoints: %w", err))
		}
		for _, cp := range cps {
			inLog[fmt.Sprintf("%d/%x", cp.Seq, []byte(cp.Head))] = true
		}
		for i := 1; i < len(anchors); i++ {
			an := anchors[i].cp
			if inLog[fmt.Sprintf("%d/%x", an.Seq, []byte(an.Head))] {
				if an.Seq+1 >= rep.FirstSeq || rep.Pruned == nil {
					res.AnchorsChecked++
				}
				continue
			}
			r2, err := audit.Verify(dir, pub, &an)
			if err != nil {
				return res, failed(res, atAnchor(err, anchorFile, anchors[i].line))
			}
			if r2.AnchorChecked {
				res.AnchorsChecked++
			}
		}
	}
	return res, nil
}

// atAnchor makes a verification failure that Verify attributes to "the
// anchor" name the anchor file and line it came from; a record that
// contradicts an anchor keeps its own place and names the anchor's in the
// reason.
func atAnchor(err error, file string, line int) error {
	ve, ok := errors.AsType[*audit.VerifyError](err)
	if !ok {
		return err
	}
	out := *ve
	switch {
	case out.Segment == "anchor":
		out.Segment, out.Line = file, line
	case out.Kind == audit.KindTruncated:
		out.Reason = fmt.Sprintf("%s (anchor at %s line %d)", out.Reason, file, line)
	default:
		return err
	}
	return &out
}

func resultOf(dir string, rep *audit.Report, anchors int) *verifyResult {
	res := &verifyResult{OK: true, Dir: dir, Anchors: anchors}
	if rep == nil {
		return res
	}
	res.Segments, res.Records, res.FirstSeq, res.LastSeq, res.Head = rep.Segments, rep.Records, rep.FirstSeq, rep.LastSeq, rep.Head
	res.Checkpoints, res.CheckpointsMatched, res.CheckpointsPruned = rep.Checkpoints, rep.CheckpointsMatched, rep.CheckpointsPruned
	res.LastCheckpoint, res.TornTails = rep.LastCheckpoint, rep.TornTails
	if rep.Pruned != nil {
		res.PrunedBefore = rep.Pruned.FirstSeq
	}
	covered := uint64(0)
	if rep.LastCheckpoint != nil {
		covered = rep.LastCheckpoint.Seq
	}
	if rep.LastSeq > covered {
		res.Unanchored = rep.LastSeq - covered
	}
	return res
}

// failed records err in res and returns the error to exit with.
func failed(res *verifyResult, err error) error {
	res.OK = false
	var ve *audit.VerifyError
	if errors.As(err, &ve) {
		res.Error = &verifyFailure{Kind: ve.Kind, Seq: ve.Seq, Segment: ve.Segment, Line: ve.Line, Reason: ve.Reason}
		return localError(codes.DataLoss, fmt.Errorf("audit log failed verification: %s at seq %d (%s line %d): %s",
			ve.Kind, ve.Seq, ve.Segment, ve.Line, ve.Reason))
	}
	return localError(codes.Unavailable, fmt.Errorf("read audit log: %w", err))
}

func printVerify(w io.Writer, r *verifyResult) {
	if r.OK {
		fmt.Fprintf(w, "audit log %s: OK\n", r.Dir)
	} else {
		e := r.Error
		if e != nil {
			fmt.Fprintf(w, "audit log %s: FAILED\n", r.Dir)
			fmt.Fprintf(w, "  first bad record: seq %d, %s line %d\n", e.Seq, e.Segment, e.Line)
			fmt.Fprintf(w, "  kind:             %s\n", e.Kind)
			fmt.Fprintf(w, "  reason:           %s\n", e.Reason)
			fmt.Fprintf(w, "  verified before it:\n")
		} else {
			fmt.Fprintf(w, "audit log %s: could not be read\n", r.Dir)
		}
	}
	if r.Records == 0 {
		fmt.Fprintf(w, "  records:          none\n")
	} else {
		fmt.Fprintf(w, "  records:          %d (seq %d to %d) in %d segments\n", r.Records, r.FirstSeq, r.LastSeq, r.Segments)
		fmt.Fprintf(w, "  head:             %s\n", r.Head)
	}
	fmt.Fprintf(w, "  checkpoints:      %d signed, %d matched, %d of pruned records\n",
		r.Checkpoints, r.CheckpointsMatched, r.CheckpointsPruned)
	if cp := r.LastCheckpoint; cp != nil {
		fmt.Fprintf(w, "  last checkpoint:  seq %d at %s by %s\n", cp.Seq, cp.Time.UTC().Format(time.RFC3339), cp.InstanceID)
	}
	if r.Anchors > 0 {
		fmt.Fprintf(w, "  anchors:          %d given, %d checked against the records\n", r.Anchors, r.AnchorsChecked)
	}
	if r.PrunedBefore > 0 {
		fmt.Fprintf(w, "  pruned:           records before %d removed under a signed prune marker\n", r.PrunedBefore)
	}
	for _, t := range r.TornTails {
		fmt.Fprintf(w, "  torn tail:        %s: %d bytes of a write never acknowledged\n", t.Segment, t.Bytes)
	}
	if r.OK && r.Unanchored > 0 {
		fmt.Fprintf(w, "  note:             the last %d records are after the last checkpoint; only an anchor\n"+
			"                    taken later can prove they were not cut off\n", r.Unanchored)
	}
	if r.OK && r.Anchors > r.AnchorsChecked {
		fmt.Fprintf(w, "  note:             %d anchors cover only pruned records and could not be checked\n",
			r.Anchors-r.AnchorsChecked)
	}
}

// readPublicKey reads a PEM "PUBLIC KEY" (PKIX) or raw DER public key.
func readPublicKey(file string) (crypto.PublicKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, localError(codes.NotFound, fmt.Errorf("read public key: %w", err))
	}
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, usageErrorf("%s holds a PEM %q block, want PUBLIC KEY", file, blk.Type)
		}
		der = blk.Bytes
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, usageErrorf("%s is not a PKIX public key (PEM PUBLIC KEY or DER)", file)
	}
	return pub, nil
}

// readAnchors reads checkpoints, one JSON object per line; blank lines are
// skipped, anything else that does not parse is an error naming the line.
func readAnchors(file string) ([]anchorEntry, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, localError(codes.NotFound, fmt.Errorf("read anchors: %w", err))
	}
	defer f.Close()
	var out []anchorEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var cp audit.Checkpoint
		if err := strictjson.Unmarshal(line, &cp); err != nil || cp.Seq == 0 || len(cp.Head) == 0 {
			return nil, usageErrorf("%s line %d is not a checkpoint", file, n)
		}
		out = append(out, anchorEntry{cp: cp, line: n})
	}
	if err := sc.Err(); err != nil {
		return nil, localError(codes.Unavailable, fmt.Errorf("read anchors: %w", err))
	}
	if len(out) == 0 {
		return nil, usageErrorf("%s holds no checkpoint", file)
	}
	return out, nil
}

// ---- audit tail / export (API) ----

type tailOptions struct {
	identity, key, method string
	since, until          string
	afterSeq, limit       uint64
	follow                bool
	context               []string
}

func (o *tailOptions) addFilterFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.identity, "identity", "", "only records of this caller identity")
	f.StringVar(&o.key, "key", "", "only records about this vault key (the client key file is --tls-key here)")
	f.StringVar(&o.method, "method", "", "only records of this RPC method, e.g. Decrypt")
	f.StringVar(&o.since, "since", "", "from this time: RFC 3339, YYYY-MM-DD, or a duration ago such as 24h")
	f.StringVar(&o.until, "until", "", "before this time (same forms as --since)")
	f.Uint64Var(&o.afterSeq, "after-seq", 0, "only records after this sequence number (resume an export)")
	f.StringSliceVar(&o.context, "context", nil, "only records made under this encryption context k=v[,k=v...] (the vault computes its keyed digest; auditor role)")
}

// contextFilter returns a filter for records made under --context, asking
// the vault for the context's keyed digest; nil when no context is given.
func (a *app) contextFilter(ctx context.Context, o *tailOptions) (func(audit.Record) bool, error) {
	if len(o.context) == 0 {
		return nil, nil
	}
	d, err := a.digestContext(ctx, o.context)
	if err != nil {
		return nil, err
	}
	return func(r audit.Record) bool { return bytes.Equal(r.ContextDigest, d) }, nil
}

func (a *app) digestContext(ctx context.Context, items []string) ([]byte, error) {
	c, err := parseContext(items)
	if err != nil {
		return nil, err
	}
	cl, err := a.auditClient()
	if err != nil {
		return nil, err
	}
	resp, err := cl.DigestContext(ctx, &custodyv1.DigestContextRequest{Context: c})
	if err != nil {
		return nil, err
	}
	return resp.GetDigest(), nil
}

func (a *app) auditDigestCommand() *cobra.Command {
	var items []string
	cmd := &cobra.Command{
		Use:   "digest --context k=v[,k=v...]",
		Short: "Ask the vault for an encryption context's digest, as audit records carry it",
		Long: `Audit records carry a keyed digest of the encryption context, never the context:
the key is held by the HSM, so a digest cannot be computed, or a guessed context
confirmed, offline. This asks custodyd for one context's digest (auditor role;
the call is itself audited), to find that context's records in a copy of the
log. "audit tail" and "audit export" take --context directly.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(items) == 0 {
				return usageErrorf("--context is required")
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			d, err := a.digestContext(ctx, items)
			if err != nil {
				return err
			}
			return a.emitValue(map[string]string{"context_digest": hex.EncodeToString(d)}, func(w io.Writer) {
				fmt.Fprintln(w, hex.EncodeToString(d))
			})
		},
	}
	cmd.Flags().StringSliceVar(&items, "context", nil, "encryption context k=v[,k=v...]; repeatable")
	return cmd
}

func (o *tailOptions) request(now time.Time) (*custodyv1.TailRequest, error) {
	req := &custodyv1.TailRequest{Identity: o.identity, Key: o.key, Method: o.method,
		AfterSeq: o.afterSeq, Follow: o.follow, Limit: o.limit}
	var err error
	if req.Since, err = auditWhen("--since", o.since, now); err != nil {
		return nil, err
	}
	if req.Until, err = auditWhen("--until", o.until, now); err != nil {
		return nil, err
	}
	if req.Since != nil && req.Until != nil && !req.Since.AsTime().Before(req.Until.AsTime()) {
		return nil, usageErrorf("--since must be before --until")
	}
	return req, nil
}

// auditWhen parses a time flag: RFC 3339, a date (midnight UTC) or a
// duration before now. Empty means unset.
func auditWhen(flag, s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return timestamppb.New(t), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return timestamppb.New(t), nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return timestamppb.New(now.Add(-d)), nil
	}
	return nil, usageErrorf("%s %q: want RFC 3339 (2025-06-01T09:00:00Z), a date (2025-06-01) or a duration ago (24h)", flag, s)
}

func (a *app) auditTailCommand() *cobra.Command {
	var o tailOptions
	cmd := &cobra.Command{
		Use:   "tail [-f] [--identity ID] [--key NAME] [--method M] [--since T] [--until T]",
		Short: "Print audit records from custodyd, optionally following new ones",
		Long: `Prints matching records in sequence order, one readable line each, or with
--output json one JSON line each, exactly as stored in the log (hashes and the
context digest in hex). With -f it keeps printing new records as they become
durable until interrupted (no --timeout applies).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := o.request(time.Now())
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			if o.follow {
				ctx, cancel = context.WithCancel(cmd.Context())
			}
			defer cancel()
			keep, err := a.contextFilter(ctx, &o)
			if err != nil {
				return err
			}
			write := func(r audit.Record) error {
				if keep != nil && !keep(r) {
					return nil
				}
				if a.output == "json" {
					return writeRecordJSON(a.stdout, r)
				}
				_, err := fmt.Fprintln(a.stdout, formatRecord(r))
				return err
			}
			err = a.streamRecords(ctx, req, write)
			if o.follow && errors.Is(cmd.Context().Err(), context.Canceled) {
				return nil // interrupted by the user: the normal end of tail -f
			}
			return err
		},
	}
	o.addFilterFlags(cmd)
	cmd.Flags().BoolVarP(&o.follow, "follow", "f", false, "keep printing new records until interrupted")
	cmd.Flags().Uint64Var(&o.limit, "limit", 0, "stop after this many records (0: no limit)")
	return cmd
}

func (a *app) auditExportCommand() *cobra.Command {
	var o tailOptions
	var out string
	var force bool
	cmd := &cobra.Command{
		Use:   "export [--since T] [--until T] [--after-seq N] [--out FILE] [--force]",
		Short: "Export audit records as JSON lines for a SIEM",
		Long: `Writes matching records as JSON lines, one per record, exactly as stored in
the log: seq, time (RFC 3339, UTC, nanoseconds), identity, role, method, key,
key_version, context_digest (the vault's keyed digest, never the context), outcome, code,
case_ref, detail, prev_hash, hash. Resume a periodic export with --after-seq set
to the last seq exported. No --timeout applies.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := o.request(time.Now())
			if err != nil {
				return err
			}
			w, finish, err := openOut(out, a.stdout, force)
			if err != nil {
				return err
			}
			keep, err := a.contextFilter(cmd.Context(), &o)
			if err != nil {
				return finish(err)
			}
			bw := bufio.NewWriter(w)
			err = a.streamRecords(cmd.Context(), req, func(r audit.Record) error {
				if keep != nil && !keep(r) {
					return nil
				}
				return writeRecordJSON(bw, r)
			})
			if ferr := bw.Flush(); err == nil && ferr != nil {
				err = localError(codes.Unavailable, fmt.Errorf("write %s: %w", out, ferr))
			}
			return finish(err)
		},
	}
	o.addFilterFlags(cmd)
	cmd.Flags().StringVar(&out, "out", "-", "file to write, - for stdout")
	cmd.Flags().BoolVar(&force, "force", false, "replace --out if it exists")
	return cmd
}

func (a *app) streamRecords(ctx context.Context, req *custodyv1.TailRequest, fn func(audit.Record) error) error {
	c, err := a.auditClient()
	if err != nil {
		return err
	}
	stream, err := c.Tail(ctx, req)
	if err != nil {
		return err
	}
	for {
		rec, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(recordFromProto(rec)); err != nil {
			return localError(codes.Unavailable, fmt.Errorf("write record: %w", err))
		}
	}
}

// recordFromProto is the inverse of the server's conversion: the record as
// stored, so that its JSON is the log's own line and its hash can be
// recomputed by anyone.
func recordFromProto(p *custodyv1.AuditRecord) audit.Record {
	return audit.Record{
		Format: int(p.GetFormat()), Seq: p.GetSeq(), Time: p.GetTime().AsTime(), Identity: p.GetIdentity(),
		Role: p.GetRole(), Method: p.GetMethod(), Key: p.GetKey(), KeyVersion: p.GetKeyVersion(),
		ContextDigest: p.GetContextDigest(), Outcome: audit.Outcome(p.GetOutcome()), Code: p.GetCode(),
		CaseRef: p.GetCaseRef(), Detail: p.GetDetail(), Replica: p.GetReplica(), PrevHash: p.GetPrevHash(), Hash: p.GetHash(),
	}
}

func writeRecordJSON(w io.Writer, r audit.Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// formatRecord is the readable one-line form of a record.
func formatRecord(r audit.Record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s %s %s %s", r.Seq, r.Time.UTC().Format("2006-01-02T15:04:05.000Z"), r.Outcome, r.Code, r.Method)
	fmt.Fprintf(&b, " identity=%s", r.Identity)
	if r.Role != "" {
		fmt.Fprintf(&b, " role=%s", r.Role)
	}
	if r.Key != "" {
		fmt.Fprintf(&b, " key=%s", r.Key)
		if r.KeyVersion != 0 {
			fmt.Fprintf(&b, " v=%d", r.KeyVersion)
		}
	}
	if len(r.ContextDigest) > 0 {
		fmt.Fprintf(&b, " ctx=%s", hex.EncodeToString(r.ContextDigest)[:min(16, 2*len(r.ContextDigest))])
	}
	if r.CaseRef != "" {
		fmt.Fprintf(&b, " case=%s", r.CaseRef)
	}
	if r.Detail != "" {
		fmt.Fprintf(&b, " detail=%q", r.Detail)
	}
	return b.String()
}

// openOut opens "-" as w itself or creates file (replacing an existing one
// only with force); finish closes it and, when err is set, removes a partly
// written file.
func openOut(file string, stdout io.Writer, force bool) (io.Writer, func(error) error, error) {
	if file == "-" || file == "" {
		return stdout, func(err error) error { return err }, nil
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(file, flags, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil, nil, errExists(file)
	}
	if err != nil {
		return nil, nil, localError(codes.FailedPrecondition, fmt.Errorf("create %s: %w", file, err))
	}
	return f, func(err error) error {
		cerr := f.Close()
		if err == nil && cerr != nil {
			err = localError(codes.Unavailable, fmt.Errorf("write %s: %w", file, cerr))
		}
		if err != nil {
			_ = os.Remove(file)
		}
		return err
	}, nil
}

// ---- audit checkpoint / pubkey (API) ----

func (a *app) auditCheckpointCommand() *cobra.Command {
	var out, pubFile string
	var current bool
	cmd := &cobra.Command{
		Use:   "checkpoint [--out FILE] [--pubkey FILE]",
		Short: "Fetch the latest signed checkpoint, to keep off-box as an anchor",
		Long: `Fetches the latest checkpoint signed by the HSM audit key (by default one
covering the current head, signed now if needed) and prints it. With --out,
appends it as one JSON line to FILE, the format "audit verify --anchor" reads;
keep that file away from the vault's host. With --pubkey, the signature is
checked before anything is written.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var pub crypto.PublicKey
			if pubFile != "" {
				var err error
				if pub, err = readPublicKey(pubFile); err != nil {
					return err
				}
			}
			c, err := a.auditClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			resp, err := c.GetLatestCheckpoint(ctx, &custodyv1.GetLatestCheckpointRequest{Current: current})
			if err != nil {
				return err
			}
			var cp audit.Checkpoint
			if err := json.Unmarshal(resp.GetJson(), &cp); err != nil || cp.Seq != resp.GetSeq() {
				return localError(codes.Internal, errors.New("server sent a malformed checkpoint"))
			}
			if pub != nil {
				if err := cp.Verify(pub); err != nil {
					return localError(codes.DataLoss, fmt.Errorf("checkpoint %d does not verify with %s", cp.Seq, pubFile))
				}
			}
			if out != "" {
				if err := appendJSONLine(out, resp.GetJson()); err != nil {
					return err
				}
			}
			return a.emitValue(cp, func(w io.Writer) {
				fmt.Fprintf(w, "seq:       %d\nhead:      %s\ntime:      %s\ninstance:  %s\nsignature: %s\n",
					cp.Seq, cp.Head, cp.Time.UTC().Format(time.RFC3339Nano), cp.InstanceID,
					map[bool]string{true: "verified with " + pubFile, false: "not checked (no --pubkey)"}[pub != nil])
				if out != "" {
					fmt.Fprintf(w, "appended to %s\n", out)
				}
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "append the checkpoint as a JSON line to this anchor file")
	cmd.Flags().StringVar(&pubFile, "pubkey", "", "audit public key to check the signature with before saving")
	cmd.Flags().BoolVar(&current, "current", true, "ask for a checkpoint covering the current head (signed now if needed)")
	return cmd
}

// appendJSONLine appends one line to file and syncs it.
func appendJSONLine(file string, line []byte) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return localError(codes.FailedPrecondition, err)
	}
	_, err = f.Write(append(bytes.TrimSpace(line), '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return localError(codes.Unavailable, fmt.Errorf("write %s: %w", file, err))
	}
	return nil
}

func (a *app) auditPubkeyCommand() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "pubkey [--out FILE]",
		Short: "Fetch the audit public key (PEM) that verifies checkpoints and reports",
		Long: `Prints the HSM audit key's public half as PEM, or writes it to --out and prints
its SHA-256 fingerprint. Compare the fingerprint with the one recorded at the
key ceremony before trusting the key.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.auditClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			resp, err := c.GetAuditPublicKey(ctx, &custodyv1.GetAuditPublicKeyRequest{})
			if err != nil {
				return err
			}
			if _, err := x509.ParsePKIXPublicKey(resp.GetDer()); err != nil {
				return localError(codes.Internal, errors.New("server sent a malformed public key"))
			}
			sum := sha256.Sum256(resp.GetDer())
			if out != "" {
				if err := os.WriteFile(out, []byte(resp.GetPem()), 0o644); err != nil {
					return localError(codes.FailedPrecondition, fmt.Errorf("write %s: %w", out, err))
				}
			}
			return a.emit(resp, func(w io.Writer) {
				if out == "" {
					fmt.Fprint(w, resp.GetPem())
					return
				}
				fmt.Fprintf(w, "wrote %s\nsha256 %x\n", out, sum)
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write the PEM public key to this file")
	return cmd
}

// ---- audit report ----

func (a *app) auditReportCommand() *cobra.Command {
	var since, until, out, pubFile string
	var force bool
	var methods []string
	cmd := &cobra.Command{
		Use:   "report [--since T] [--until T] [--out FILE] [--pubkey FILE]",
		Short: "Get a transparency report signed by the HSM audit key",
		Long: `Asks custodyd to verify its log and build a transparency report for the
window: per key and per identity, successful and denied decrypt/unwrap
operations, and uses under disclosure orders (by case reference), bound to the
log by sequence range and head hash and signed by the HSM audit key. Writes the
signed JSON to --out (or stdout) and prints a summary. Check a report with
"audit report verify". Verifying a large log takes time: raise --timeout.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := os.Lstat(out); out != "" && out != "-" && err == nil && !force {
				return errExists(out) // before asking custodyd to sign anything
			}
			now := time.Now()
			s, err := auditWhen("--since", since, now)
			if err != nil {
				return err
			}
			u, err := auditWhen("--until", until, now)
			if err != nil {
				return err
			}
			if s != nil && u != nil && !s.AsTime().Before(u.AsTime()) {
				return usageErrorf("--since must be before --until")
			}
			var pub crypto.PublicKey
			if pubFile != "" {
				if pub, err = readPublicKey(pubFile); err != nil {
					return err
				}
			}
			c, err := a.auditClient()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			resp, err := c.Report(ctx, &custodyv1.ReportRequest{Since: s, Until: u, Methods: methods})
			if err != nil {
				return err
			}
			rep, err := parseReport(resp.GetJson())
			if err != nil {
				return localError(codes.Internal, fmt.Errorf("server sent a malformed report: %w", err))
			}
			if pub != nil {
				if err := rep.VerifyReport(pub); err != nil {
					return localError(codes.DataLoss, fmt.Errorf("report signature does not verify with %s", pubFile))
				}
			}
			if out == "" || out == "-" {
				_, err := a.stdout.Write(append(bytes.TrimSpace(resp.GetJson()), '\n'))
				return err
			}
			if _, err := os.Lstat(out); err == nil {
				if !force {
					return errExists(out)
				}
				if err := os.Remove(out); err != nil {
					return localError(codes.FailedPrecondition, err)
				}
			}
			if err := createFile(out, append(bytes.TrimSpace(resp.GetJson()), '\n'), 0o644); err != nil {
				return err
			}
			return a.emitValue(rep, func(w io.Writer) {
				fmt.Fprintf(w, "wrote %s\n", out)
				printReport(w, rep)
			})
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "window start: RFC 3339, YYYY-MM-DD, or a duration ago such as 720h")
	cmd.Flags().StringVar(&until, "until", "", "window end, exclusive (same forms); default: the head")
	cmd.Flags().StringVar(&out, "out", "", "write the signed report (JSON) to this file instead of stdout")
	cmd.Flags().BoolVar(&force, "force", false, "replace --out if it exists")
	cmd.Flags().StringVar(&pubFile, "pubkey", "", "audit public key to check the signature with before saving")
	cmd.Flags().StringSliceVar(&methods, "method", nil, "methods counted as decrypt/unwrap (default: the server's set)")
	cmd.AddCommand(a.auditReportVerifyCommand(), a.auditReportReplicasCommand())
	return cmd
}

func (a *app) auditReportVerifyCommand() *cobra.Command {
	var file, pubFile string
	cmd := &cobra.Command{
		Use:   "verify --file FILE --pubkey FILE",
		Short: "Check a transparency report's signature offline",
		Long:  `Checks that FILE is a transparency report signed by the audit key in --pubkey, and prints its summary. Exits 1 if any value was changed after signing.`,
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" || pubFile == "" {
				return usageErrorf("--file FILE and --pubkey FILE are required")
			}
			pub, err := readPublicKey(pubFile)
			if err != nil {
				return err
			}
			b, err := os.ReadFile(file)
			if err != nil {
				return localError(codes.NotFound, fmt.Errorf("read report: %w", err))
			}
			rep, err := parseReport(b)
			if err != nil {
				return usageErrorf("%s is not a transparency report: %v", file, err)
			}
			if err := rep.VerifyReport(pub); err != nil {
				return localError(codes.DataLoss, fmt.Errorf("%s: signature does not verify: the report was changed or signed by another key", file))
			}
			return a.emitValue(rep, func(w io.Writer) {
				fmt.Fprintf(w, "report %s: signature OK\n", file)
				printReport(w, rep)
			})
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "the report (JSON) to check")
	cmd.Flags().StringVar(&pubFile, "pubkey", "", "audit public key (PEM PUBLIC KEY or DER)")
	return cmd
}

func parseReport(b []byte) (*audit.TransparencyReport, error) {
	var rep audit.TransparencyReport
	if err := strictjson.Unmarshal(b, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

func printReport(w io.Writer, r *audit.TransparencyReport) {
	window := func(t time.Time, def string) string {
		if t.IsZero() {
			return def
		}
		return t.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "window:      %s to %s\n", window(r.Since, "start of log"), window(r.Until, "head"))
	fmt.Fprintf(w, "records:     %d (seq %d to %d), head %s\n", r.Records, r.FirstSeq, r.LastSeq, r.Head)
	fmt.Fprintf(w, "methods:     %s\n", strings.Join(r.Methods, ", "))
	fmt.Fprintf(w, "operations:  %d\ndisclosures: %d\n", r.Operations, r.Disclosures)
	for _, k := range r.Keys {
		fmt.Fprintf(w, "  key %s: %d operations, %d denied, %d under disclosure orders\n", k.Name, k.Operations, k.Denied, k.Disclosures)
	}
	for _, id := range r.Identities {
		fmt.Fprintf(w, "  identity %s: %d operations, %d denied, %d under disclosure orders\n", id.Name, id.Operations, id.Denied, id.Disclosures)
	}
	for _, c := range r.Cases {
		fmt.Fprintf(w, "  case %s: %d uses\n", c.CaseRef, c.Uses)
	}
}
