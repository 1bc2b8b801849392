package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/server"
	"github.com/custodyhq/custody/internal/testenv"
)

// auditEnv is a real custodyd (testenv: SoftHSM, bbolt, mTLS) whose audit
// log the tests seed with relay traffic as the crypto service records it.
type auditEnv struct {
	dir  string
	log  *audit.Log
	pub  *ecdsa.PublicKey
	env  *testenv.Env
	addr string
}

func startAuditEnv(t *testing.T) *auditEnv {
	t.Helper()
	env := testenv.Start(t, testenv.Settings{ExtraClients: []string{"stranger"}})
	pub, ok := env.D.AuditPK.(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("audit key is %T", env.D.AuditPK)
	}
	if seq, _ := env.D.Audit.Head(); seq != 0 {
		t.Fatalf("a fresh vault's log holds %d records", seq)
	}
	return &auditEnv{dir: env.Config.Audit.Dir, log: env.D.Audit, pub: pub, env: env, addr: env.Addr}
}

func (e *auditEnv) client(t *testing.T, name string) custodyv1.AuditServiceClient {
	t.Helper()
	return custodyv1.NewAuditServiceClient(e.env.Dial(t, name))
}

func (e *auditEnv) identity(name string) string { return e.env.Cert[name].Identity }

// seed appends relay traffic as the crypto service would record it.
func (e *auditEnv) seed(t *testing.T, recs ...audit.Record) {
	t.Helper()
	for _, r := range recs {
		if _, err := e.log.Append(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
}

func use(identity, method, key string, outcome audit.Outcome) audit.Record {
	code := "OK"
	if outcome == audit.OutcomeDenied {
		code = "PermissionDenied"
	}
	return audit.Record{Identity: identity, Role: "relay", Method: method, Key: key, KeyVersion: 1,
		ContextDigest: sha256Of(fmt.Sprint(map[string]string{"conversation": "c-1"})), Outcome: outcome, Code: code}
}

func standardTraffic() []audit.Record {
	return []audit.Record{
		use("relay-a", "Decrypt", "mail", audit.OutcomeOK),
		use("relay-a", "Decrypt", "chat", audit.OutcomeOK),
		use("relay-b", "Decrypt", "mail", audit.OutcomeDenied),
		use("relay-a", "Encrypt", "mail", audit.OutcomeOK),
		use("relay-a", "Decrypt", "mail", audit.OutcomeOK),
		use("relay-b", "Unwrap", "mail", audit.OutcomeOK),
	}
}

func tail(t *testing.T, c custodyv1.AuditServiceClient, req *custodyv1.TailRequest) ([]*custodyv1.AuditRecord, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.Tail(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*custodyv1.AuditRecord
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
}

// logged returns the log's records matching f, read directly from disk.
func (e *auditEnv) logged(t *testing.T, f audit.Filter) []audit.Record {
	t.Helper()
	var out []audit.Record
	if err := e.log.Read(context.Background(), f, func(r audit.Record) error { out = append(out, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAuditTailReturnsExactlyTheFilteredRecordsAsStored(t *testing.T) {
	e := startAuditEnv(t)
	e.seed(t, standardTraffic()...)
	c := e.client(t, "auditor")

	got, err := tail(t, c, &custodyv1.TailRequest{Key: "mail", Method: "Decrypt"})
	if err != nil {
		t.Fatal(err)
	}
	want := e.logged(t, audit.Filter{Key: "mail", Method: "Decrypt"})
	if len(got) != 3 || len(want) != 3 {
		t.Fatalf("got %d records, log holds %d matching; want 3", len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], server.RecordToProto(want[i])) {
			t.Errorf("record %d differs from the log:\n got %v\nwant %v", i, got[i], server.RecordToProto(want[i]))
		}
	}
	if got[0].GetSeq() != 1 || got[1].GetSeq() != 3 || got[2].GetSeq() != 5 || len(got[0].GetContextDigest()) != 32 {
		t.Errorf("seqs %d,%d,%d, want 1,3,5 with a context digest", got[0].GetSeq(), got[1].GetSeq(), got[2].GetSeq())
	}

	byIdentity, err := tail(t, c, &custodyv1.TailRequest{Identity: "relay-b"})
	if err != nil || len(byIdentity) != 2 {
		t.Fatalf("identity filter: %d records, %v; want 2", len(byIdentity), err)
	}
	limited, err := tail(t, c, &custodyv1.TailRequest{AfterSeq: 2, Limit: 2})
	if err != nil || len(limited) != 2 || limited[0].GetSeq() != 3 || limited[1].GetSeq() != 4 {
		t.Fatalf("after_seq 2 limit 2: %v, %v; want seqs 3 and 4", limited, err)
	}
	future, err := tail(t, c, &custodyv1.TailRequest{Since: timestamppb.New(time.Now().Add(time.Hour))})
	if err != nil || len(future) != 0 {
		t.Fatalf("since in the future: %d records, %v", len(future), err)
	}
	_, err = tail(t, c, &custodyv1.TailRequest{Since: timestamppb.New(time.Now()), Until: timestamppb.New(time.Now().Add(-time.Hour))})
	wantCode(t, err, codes.InvalidArgument, "since after until")
}

func TestAuditServiceIsForAuditorsAndOfficersOnlyAndAuditsRefusals(t *testing.T) {
	e := startAuditEnv(t)
	e.seed(t, standardTraffic()...)
	for _, name := range []string{"relay", "operator", "stranger"} {
		c := e.client(t, name)
		_, err := tail(t, c, &custodyv1.TailRequest{})
		want := codes.PermissionDenied
		wantCode(t, err, want, name+" Tail")
		_, err = c.GetLatestCheckpoint(ctx(t), &custodyv1.GetLatestCheckpointRequest{Current: true})
		wantCode(t, err, want, name+" GetLatestCheckpoint")
		_, err = c.Report(ctx(t), &custodyv1.ReportRequest{})
		wantCode(t, err, want, name+" Report")
		_, err = c.GetAuditPublicKey(ctx(t), &custodyv1.GetAuditPublicKeyRequest{})
		wantCode(t, err, want, name+" GetAuditPublicKey")
	}
	if _, err := tail(t, e.client(t, "officer"), &custodyv1.TailRequest{}); err != nil {
		t.Fatalf("officer Tail: %v", err)
	}
	// Refusals are on the record, and no checkpoint was signed for them.
	relayID := e.identity("relay")
	denied := e.logged(t, audit.Filter{Identity: relayID, Method: "Tail"})
	if len(denied) != 1 || denied[0].Outcome != audit.OutcomeDenied || denied[0].Code != "PermissionDenied" {
		t.Fatalf("relay's Tail audited as %+v, want one denied record", denied)
	}
	if _, ok := e.log.LatestCheckpoint(); ok {
		t.Fatal("a refused GetLatestCheckpoint signed a checkpoint")
	}
}

func TestAuditServiceRegisteredWithoutAuthorisationRefusesEverything(t *testing.T) {
	e := startAuditEnv(t)
	// A second server on which the service was registered directly, without
	// the server's policy: it must fail closed, not serve the log.
	g := grpc.NewServer()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	custodyv1.RegisterAuditServiceServer(g, server.NewAuditService(e.log, key))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	defer g.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = custodyv1.NewAuditServiceClient(conn).GetAuditPublicKey(ctx(t), &custodyv1.GetAuditPublicKeyRequest{})
	wantCode(t, err, codes.PermissionDenied, "unauthorised service")
}

func TestAuditTailFollowDeliversNewRecordsAndEndsWhenTheClientLeaves(t *testing.T) {
	e := startAuditEnv(t)
	e.seed(t, use("relay-a", "Decrypt", "mail", audit.OutcomeOK))
	c := e.client(t, "auditor")
	fctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.Tail(fctx, &custodyv1.TailRequest{Key: "mail", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil || first.GetSeq() != 1 {
		t.Fatalf("first record: %v, %v", first, err)
	}
	e.seed(t, use("relay-a", "Decrypt", "chat", audit.OutcomeOK), use("relay-b", "Unwrap", "mail", audit.OutcomeOK))
	next, err := s.Recv()
	if err != nil || next.GetSeq() != 3 || next.GetMethod() != "Unwrap" {
		t.Fatalf("followed record: %v, %v; want seq 3 (Unwrap on mail)", next, err)
	}
	cancel()
	// The handler ends and the Tail itself is audited as cancelled.
	auditorID := e.identity("auditor")
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs := e.logged(t, audit.Filter{Identity: auditorID, Method: "Tail"})
		if len(recs) == 1 && recs[0].Code == codes.Canceled.String() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("follow did not end after the client left: Tail records %+v", recs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAuditCheckpointAndPublicKeyLetAnAuditorVerifyOffline(t *testing.T) {
	e := startAuditEnv(t)
	c := e.client(t, "auditor")
	_, err := c.GetLatestCheckpoint(ctx(t), &custodyv1.GetLatestCheckpointRequest{})
	wantCode(t, err, codes.NotFound, "latest checkpoint of a log that has none")
	e.seed(t, standardTraffic()...)

	cpb, err := c.GetLatestCheckpoint(ctx(t), &custodyv1.GetLatestCheckpointRequest{Current: true})
	if err != nil {
		t.Fatal(err)
	}
	var cp audit.Checkpoint
	if err := json.Unmarshal(cpb.GetJson(), &cp); err != nil {
		t.Fatal(err)
	}
	// The denied GetLatestCheckpoint above is record 7; the anchor covers it.
	if cp.Seq != 7 || cpb.GetSeq() != 7 || !bytes.Equal(cp.Head, cpb.GetHeadHash()) || cp.InstanceID != cpb.GetInstance() ||
		!bytes.Equal(cp.Signature, cpb.GetSignature()) || !cp.Time.Equal(cpb.GetTime().AsTime()) {
		t.Fatalf("checkpoint fields disagree with its JSON or head: %v / %+v", cpb, cp)
	}
	if rec7 := e.logged(t, audit.Filter{AfterSeq: 6}); len(rec7) == 0 || !bytes.Equal(rec7[0].Hash, cp.Head) {
		t.Fatal("checkpoint head is not record 7's hash")
	}

	pk, err := c.GetAuditPublicKey(ctx(t), &custodyv1.GetAuditPublicKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(pk.GetDer())
	if err != nil {
		t.Fatal(err)
	}
	if !e.pub.Equal(pub) {
		t.Fatal("served public key is not the audit key")
	}
	blk, _ := pem.Decode([]byte(pk.GetPem()))
	if sum := sha256.Sum256(pk.GetDer()); blk == nil || blk.Type != "PUBLIC KEY" || !bytes.Equal(blk.Bytes, pk.GetDer()) ||
		!bytes.Equal(sum[:], pk.GetSha256()) {
		t.Fatal("PEM or fingerprint does not match the DER key")
	}
	rep, err := audit.Verify(e.dir, pub, &cp)
	if err != nil || !rep.AnchorChecked {
		t.Fatalf("offline verify with the served key and checkpoint as anchor: %+v, %v", rep, err)
	}
}

func TestAuditReportIsSignedAndRefusedForATamperedLog(t *testing.T) {
	e := startAuditEnv(t)
	e.seed(t, standardTraffic()...)
	e.seed(t, audit.Record{Identity: "lawful-access", Role: "relay", Method: "Decrypt", Key: "mail",
		CaseRef: "case-7", Outcome: audit.OutcomeOK, Code: "OK"})
	c := e.client(t, "auditor")
	resp, err := c.Report(ctx(t), &custodyv1.ReportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var rep audit.TransparencyReport
	if err := json.Unmarshal(resp.GetJson(), &rep); err != nil {
		t.Fatal(err)
	}
	if err := rep.VerifyReport(e.pub); err != nil || !bytes.Equal(rep.Signature, resp.GetSignature()) {
		t.Fatalf("report signature: %v", err)
	}
	// mail: Decrypt ok ×2 + Unwrap ok + case-7 Decrypt = 4 operations, 1 denied, 1 disclosure.
	var mail *audit.UseCount
	for i := range rep.Keys {
		if rep.Keys[i].Name == "mail" {
			mail = &rep.Keys[i]
		}
	}
	if mail == nil || mail.Operations != 4 || mail.Denied != 1 || mail.Disclosures != 1 ||
		len(rep.Cases) != 1 || rep.Cases[0].CaseRef != "case-7" || rep.Records != 7 {
		t.Fatalf("report counts = %+v (keys %+v)", rep, rep.Keys)
	}

	// Someone with the disk edits who did the denied decrypt.
	seg := filepath.Join(e.dir, "audit-00000000000000000001.log")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.Replace(b, []byte(`"relay-b"`), []byte(`"relay-c"`), 1)
	if bytes.Equal(b, edited) {
		t.Fatal("test did not edit the log")
	}
	if err := os.WriteFile(seg, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = c.Report(ctx(t), &custodyv1.ReportRequest{})
	wantCode(t, err, codes.DataLoss, "report over a tampered log")
	if !strings.Contains(err.Error(), "modified at seq 3") {
		t.Errorf("error %v does not name the modified record 3", err)
	}
}

func sha256Of(s string) []byte {
	d := sha256.Sum256([]byte(s))
	return d[:]
}
