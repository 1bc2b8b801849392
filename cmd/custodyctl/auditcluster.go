package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
)

// Audit of a cluster: every replica keeps its own chain and publishes its
// newest signed checkpoint to the vault's etcd store. These commands read
// those checkpoints (straight from etcd: they are signed by the HSM audit
// key, so no store MAC is needed to trust them) and verify or report on
// every replica's chain together, offline.
//
// The etcd store's layout (internal/store/etcd.go): the record of store key
// K is at PREFIX + "kv/" + K and holds an 8-byte revision, then the sealed
// value: a 10-byte header (magic, write revision), the value, and a 32-byte
// HMAC-SHA256 tag.

const (
	etcdRecordDir = "kv/"
	etcdRevLen    = 8
	sealHeaderLen = 10
	sealTagLen    = 32
)

// defaultEtcdPrefix is custodyd's default store.etcd.prefix.
const defaultEtcdPrefix = "/custody/"

// etcdFlags say how to read the vault's etcd store.
type etcdFlags struct {
	endpoints          []string
	ca, cert, key, pfx string
	timeout            time.Duration
}

func (f *etcdFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&f.endpoints, "etcd-endpoints", nil, "the vault's etcd client URLs (https://host:2379,...), to read the replicas' published checkpoints")
	cmd.Flags().StringVar(&f.ca, "etcd-ca", "", "CA file of the etcd members' certificates")
	cmd.Flags().StringVar(&f.cert, "etcd-cert", "", "etcd client certificate file")
	cmd.Flags().StringVar(&f.key, "etcd-key", "", "etcd client key file")
	cmd.Flags().StringVar(&f.pfx, "etcd-prefix", defaultEtcdPrefix, "the vault's etcd prefix (store.etcd.prefix in custodyd's config)")
	cmd.Flags().DurationVar(&f.timeout, "etcd-timeout", 10*time.Second, "how long to wait for etcd")
}

func (f *etcdFlags) set() bool { return len(f.endpoints) > 0 }

// published reads every replica's newest published checkpoint from etcd.
func (f *etcdFlags) published(ctx context.Context) ([]audit.Checkpoint, error) {
	if f.ca == "" || f.cert == "" || f.key == "" {
		return nil, usageErrorf("--etcd-endpoints needs --etcd-ca, --etcd-cert and --etcd-key (etcd is reached over TLS only)")
	}
	pair, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, localError(codes.NotFound, fmt.Errorf("etcd client certificate: %w", err))
	}
	caPEM, err := os.ReadFile(f.ca)
	if err != nil {
		return nil, localError(codes.NotFound, fmt.Errorf("etcd CA: %w", err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, usageErrorf("--etcd-ca %s holds no PEM certificate", f.ca)
	}
	if !strings.HasPrefix(f.pfx, "/") || !strings.HasSuffix(f.pfx, "/") {
		return nil, usageErrorf("--etcd-prefix %q must start and end with /", f.pfx)
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: f.endpoints, DialTimeout: f.timeout, Logger: zap.NewNop(), Context: ctx,
		TLS: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{pair}}})
	if err != nil {
		return nil, localError(codes.Unavailable, fmt.Errorf("etcd: %w", err))
	}
	defer cli.Close()
	dir := f.pfx + etcdRecordDir + audit.PublishedPrefix
	resp, err := cli.Get(ctx, dir, clientv3.WithPrefix())
	if err != nil {
		return nil, localError(codes.Unavailable, fmt.Errorf("etcd: %w", err))
	}
	out := make([]audit.Checkpoint, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		// The checkpoint inside is signed by the audit key; the signature
		// is what is checked, not the store's tag.
		v := kv.Value
		if len(v) < etcdRevLen+sealHeaderLen+sealTagLen {
			return nil, localError(codes.DataLoss, fmt.Errorf("published checkpoint %s is malformed", kv.Key))
		}
		v = v[etcdRevLen+sealHeaderLen : len(v)-sealTagLen]
		var cp audit.Checkpoint
		if err := json.Unmarshal(v, &cp); err != nil {
			return nil, localError(codes.DataLoss, fmt.Errorf("published checkpoint %s: %v", kv.Key, err))
		}
		out = append(out, cp)
	}
	return out, nil
}

// readPublished reads the published checkpoints from file or etcd (none:
// the chains are verified without them).
func readPublished(ctx context.Context, file string, ef etcdFlags) ([]audit.Checkpoint, error) {
	switch {
	case file != "" && ef.set():
		return nil, usageErrorf("give --checkpoints or --etcd-endpoints, not both")
	case file != "":
		entries, err := readAnchors(file)
		if err != nil {
			return nil, err
		}
		out := make([]audit.Checkpoint, len(entries))
		for i, e := range entries {
			out[i] = e.cp
		}
		return out, nil
	case ef.set():
		return ef.published(ctx)
	}
	return nil, nil
}

// replicaResult is one chain in --output json.
type replicaResult struct {
	Replica   string            `json:"replica"`
	Dir       string            `json:"dir,omitempty"`
	OK        bool              `json:"ok"`
	Records   uint64            `json:"records"`
	FirstSeq  uint64            `json:"first_seq"`
	LastSeq   uint64            `json:"last_seq"`
	Published *audit.Checkpoint `json:"published,omitempty"`
	Checked   bool              `json:"published_checked"`
	TornTails []audit.TornTail  `json:"torn_tails,omitempty"`
	Error     *verifyFailure    `json:"error,omitempty"`
}

type replicasResult struct {
	OK       bool            `json:"ok"`
	Replicas []replicaResult `json:"replicas"`
}

func (a *app) verifyReplicas(dirs []string, pub crypto.PublicKey, published []audit.Checkpoint) error {
	chains, verr := audit.VerifyReplicas(dirs, pub, published)
	if verr != nil && chains == nil {
		return localError(codes.DataLoss, verr)
	}
	res := replicasResult{OK: verr == nil}
	for _, c := range chains {
		r := replicaResult{Replica: c.Replica, Dir: c.Dir, OK: c.Err == nil, Published: c.Published}
		if c.Report != nil {
			r.Records, r.FirstSeq, r.LastSeq, r.Checked, r.TornTails = c.Report.Records, c.Report.FirstSeq, c.Report.LastSeq, c.Report.AnchorChecked, c.Report.TornTails
		}
		var ve *audit.VerifyError
		if errors.As(c.Err, &ve) {
			r.Error = &verifyFailure{Kind: ve.Kind, Seq: ve.Seq, Segment: ve.Segment, Line: ve.Line, Reason: ve.Reason}
		} else if c.Err != nil {
			r.Error = &verifyFailure{Reason: c.Err.Error()}
		}
		res.Replicas = append(res.Replicas, r)
	}
	if err := a.emitValue(res, func(w io.Writer) { printReplicas(w, res) }); err != nil {
		return err
	}
	if verr != nil {
		return localError(codes.DataLoss, fmt.Errorf("audit chains failed verification together: %v", verr))
	}
	return nil
}

func printReplicas(w io.Writer, res replicasResult) {
	verdict := "OK"
	if !res.OK {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "audit chains of %d replicas: %s\n", len(res.Replicas), verdict)
	for _, r := range res.Replicas {
		state := "OK"
		if !r.OK {
			state = "FAILED"
		}
		where := r.Dir
		if where == "" {
			where = "(no directory given)"
		}
		fmt.Fprintf(w, "  replica %s: %s  %s\n", r.Replica, state, where)
		if r.Records > 0 {
			fmt.Fprintf(w, "    records:      %d (seq %d to %d)\n", r.Records, r.FirstSeq, r.LastSeq)
		}
		if r.Published != nil {
			checked := "not checked"
			if r.Checked {
				checked = "matches the chain"
			}
			fmt.Fprintf(w, "    published:    checkpoint %d at %s (%s)\n", r.Published.Seq, r.Published.Time.UTC().Format(time.RFC3339), checked)
		} else {
			fmt.Fprintf(w, "    published:    none found for this replica\n")
		}
		for _, t := range r.TornTails {
			fmt.Fprintf(w, "    torn tail:    %s: %d bytes of a write never acknowledged\n", t.Segment, t.Bytes)
		}
		if e := r.Error; e != nil {
			fmt.Fprintf(w, "    problem:      %s at seq %d (%s line %d): %s\n", e.Kind, e.Seq, e.Segment, e.Line, e.Reason)
		}
	}
}

// auditReplicasCommand exports the replicas' published checkpoints.
func (a *app) auditReplicasCommand() *cobra.Command {
	var ef etcdFlags
	var out string
	cmd := &cobra.Command{
		Use:   "replicas --etcd-endpoints URLS --etcd-ca FILE --etcd-cert FILE --etcd-key FILE [--etcd-prefix P] [--out FILE]",
		Short: "List the checkpoints every replica published to the vault's etcd store",
		Long: `Reads the newest signed checkpoint each custodyd replica published to the
vault's etcd store and prints them, or writes them as JSON lines to --out: the
file "audit verify --checkpoints" reads, for verifying every replica's chain
together offline. Each checkpoint is signed by the HSM audit key.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !ef.set() {
				return usageErrorf("--etcd-endpoints is required")
			}
			cps, err := ef.published(cmd.Context())
			if err != nil {
				return err
			}
			if out != "" {
				var b strings.Builder
				for _, cp := range cps {
					line, err := json.Marshal(cp)
					if err != nil {
						return err
					}
					b.Write(line)
					b.WriteByte('\n')
				}
				if err := os.WriteFile(out, []byte(b.String()), 0o600); err != nil {
					return localError(codes.Unavailable, err)
				}
			}
			return a.emitValue(cps, func(w io.Writer) {
				for _, cp := range cps {
					fmt.Fprintf(w, "replica %s: checkpoint %d at %s head %x\n", cp.InstanceID, cp.Seq, cp.Time.UTC().Format(time.RFC3339), []byte(cp.Head))
				}
				if out != "" {
					fmt.Fprintf(w, "wrote %d checkpoints to %s\n", len(cps), out)
				}
			})
		},
	}
	ef.add(cmd)
	cmd.Flags().StringVar(&out, "out", "", "write the checkpoints to FILE as JSON lines")
	return cmd
}

// auditReportReplicasCommand builds a transparency report over every
// replica's chain, offline.
func (a *app) auditReportReplicasCommand() *cobra.Command {
	var dirs, methods []string
	var pubFile, publishedFile, since, until, out string
	var ef etcdFlags
	cmd := &cobra.Command{
		Use:   "replicas --dir DIR --dir DIR ... --pubkey FILE [--checkpoints FILE | --etcd-endpoints URLS ...] [--methods M,...] [--since T] [--until T] [--out FILE]",
		Short: "Build a transparency report over every replica's chain, offline",
		Long: `Verifies every replica's audit chain together (as "audit verify" does with
several directories) and, only if they verify, builds one transparency report
counting every replica's decrypts, unwraps and disclosure-order uses, bound to
each chain's range and head. The report is built offline and is not signed:
anyone holding the chains and the audit public key can build it again and
compare. Which methods count is the vault's own declaration: read from a
report one replica signs (--addr), unless --methods names them. Writes JSON to
--out (or stdout) and prints a summary.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(dirs) == 0 || pubFile == "" {
				return usageErrorf("--dir DIR (once per replica) and --pubkey FILE are required")
			}
			pub, err := readPublicKey(pubFile)
			if err != nil {
				return err
			}
			s, u, err := parseWindow(since, until)
			if err != nil {
				return err
			}
			published, err := readPublished(cmd.Context(), publishedFile, ef)
			if err != nil {
				return err
			}
			if _, err := audit.VerifyReplicas(dirs, pub, published); err != nil {
				return localError(codes.DataLoss, fmt.Errorf("the chains do not verify together (no report): %v", err))
			}
			if len(methods) == 0 {
				if methods, err = a.reportMethods(cmd.Context(), pub); err != nil {
					return err
				}
			}
			counts := func(method string) bool {
				base, _, _ := strings.Cut(method, "[")
				return slices.Contains(methods, base)
			}
			rep, err := audit.BuildReplicasReport(dirs, s, u, methods, counts)
			if err != nil {
				return localError(codes.DataLoss, err)
			}
			b, err := json.MarshalIndent(rep, "", "  ")
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err := a.stdout.Write(append(b, '\n'))
				return err
			}
			if err := createFile(out, append(b, '\n'), 0o644); err != nil {
				return err
			}
			return a.emitValue(rep, func(w io.Writer) {
				fmt.Fprintf(w, "report over %d replicas (unsigned, built offline):\n", len(rep.Replicas))
				for _, r := range rep.Replicas {
					fmt.Fprintf(w, "  replica %s: %d records, seq %d to %d\n", r.Replica, r.Records, r.FirstSeq, r.LastSeq)
				}
				printReport(w, rep)
			})
		},
	}
	cmd.Flags().StringArrayVar(&dirs, "dir", nil, "one replica's audit log directory (repeat for each replica)")
	cmd.Flags().StringVar(&pubFile, "pubkey", "", "audit public key file (PEM PUBLIC KEY or DER)")
	cmd.Flags().StringVar(&publishedFile, "checkpoints", "", "the replicas' published checkpoints (JSON lines, from \"audit replicas --out\")")
	cmd.Flags().StringVar(&since, "since", "", "start of the window (RFC 3339), inclusive")
	cmd.Flags().StringVar(&until, "until", "", "end of the window (RFC 3339), exclusive")
	cmd.Flags().StringVar(&out, "out", "", "write the report (JSON) to FILE")
	cmd.Flags().StringSliceVar(&methods, "methods", nil, "the methods to count (default: those a replica's signed report counts)")
	ef.add(cmd)
	return cmd
}

// reportMethods asks a replica for a signed report of an empty window and
// returns the methods it counts: the server's declaration of every method
// that yields plaintext or a data key.
func (a *app) reportMethods(ctx context.Context, pub crypto.PublicKey) ([]string, error) {
	c, err := a.auditClient()
	if err != nil {
		return nil, err
	}
	ctx, cancel := a.callCtx(ctx)
	defer cancel()
	at := time.Unix(0, 0)
	resp, err := c.Report(ctx, &custodyv1.ReportRequest{Since: timestamppb.New(at), Until: timestamppb.New(at.Add(time.Second))})
	if err != nil {
		return nil, err
	}
	rep, err := parseReport(resp.GetJson())
	if err != nil {
		return nil, localError(codes.Internal, fmt.Errorf("server sent a malformed report: %w", err))
	}
	if err := rep.VerifyReport(pub); err != nil {
		return nil, localError(codes.DataLoss, errors.New("the replica's report does not verify with --pubkey"))
	}
	if len(rep.Methods) == 0 {
		return nil, localError(codes.Internal, errors.New("the replica's report counts no methods"))
	}
	return rep.Methods, nil
}

// parseWindow parses optional RFC 3339 bounds.
func parseWindow(since, until string) (time.Time, time.Time, error) {
	var s, u time.Time
	var err error
	if since != "" {
		if s, err = time.Parse(time.RFC3339, since); err != nil {
			return s, u, usageErrorf("--since: %v", err)
		}
	}
	if until != "" {
		if u, err = time.Parse(time.RFC3339, until); err != nil {
			return s, u, usageErrorf("--until: %v", err)
		}
	}
	return s, u, nil
}
