package server_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	_ "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/server"
	"github.com/custodyhq/custody/internal/testenv"
)

// custodyServices are the services the API defines; every method of each
// must be declared in server.Methods, and nothing else may be.
var custodyServices = []string{
	"custody.v1.KeyService", "custody.v1.CryptoService", "custody.v1.DataKeyService",
	"custody.v1.GovernanceService", "custody.v1.AuditService", "custody.v1.StatusService", "custody.v1.SealService",
}

func TestEveryRPCIsDeclaredExactlyOnce(t *testing.T) {
	declared := map[string]*server.Method{}
	for _, m := range server.Methods {
		declared[m.FullName()] = m
	}
	seen := map[string]bool{}
	for _, svc := range custodyServices {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
		if err != nil {
			t.Fatalf("service %s: %v", svc, err)
		}
		ms := d.(protoreflect.ServiceDescriptor).Methods()
		for i := range ms.Len() {
			md := ms.Get(i)
			full := "/" + svc + "/" + string(md.Name())
			seen[full] = true
			m, ok := declared[full]
			if !ok {
				t.Errorf("%s is served but not declared in server.Methods", full)
				continue
			}
			if m.Stream != md.IsStreamingServer() || md.IsStreamingClient() {
				t.Errorf("%s: declared stream=%t, the API says server stream %t", full, m.Stream, md.IsStreamingServer())
			}
			if len(m.Roles) == 0 {
				t.Errorf("%s: no role may call it", full)
			}
			if m.KeyOp() && !slices.Equal(m.Roles, []policy.Role{policy.RoleRelay}) {
				t.Errorf("%s: a key operation open to %v: only relays use keys", full, m.Roles)
			}
			if m.Disclosure && (!m.KeyOp() || m.Mutates || (m.Op != policy.OpDecrypt && m.Op != policy.OpUnwrap)) {
				t.Errorf("%s: a disclosure order may only authorise reads of one key's data", full)
			}
			if m.KeyOp() && m.Cost < 1 {
				t.Errorf("%s: a key operation with no budget cost", full)
			}
		}
	}
	for full := range declared {
		if !seen[full] {
			t.Errorf("%s is declared but the API has no such method", full)
		}
	}
}

// Every declared method refuses a caller with no role and every role the
// declaration does not list, before its handler runs, and the refusal is
// on the record. Requests are empty messages: a handler that ran would
// answer INVALID_ARGUMENT, not PERMISSION_DENIED.
func TestEveryDeclaredMethodRefusesUndeclaredRolesOnTheRecord(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{ExtraClients: []string{"stranger"}})
	conns := map[string]*grpc.ClientConn{}
	for _, c := range []string{"relay", "operator", "officer", "auditor", "stranger"} {
		conns[c] = e.Dial(t, c)
	}
	roleOf := map[string]policy.Role{"relay": policy.RoleRelay, "operator": policy.RoleOperator, "officer": policy.RoleOfficer, "auditor": policy.RoleAuditor}
	refusals := 0
	for _, m := range server.Methods {
		for client, conn := range conns {
			if r, ok := roleOf[client]; ok && m.Allows(r) {
				continue
			}
			err := invokeEmpty(t, conn, m)
			if code(err) != codes.PermissionDenied {
				t.Errorf("%s as %s: %v, want PermissionDenied", m.Name, client, err)
				continue
			}
			refusals++
			recs := 0
			_ = e.D.Audit.Read(ctx(t), audit.Filter{Identity: e.Cert[client].Identity, Method: m.Name}, func(r audit.Record) error {
				if r.Outcome == audit.OutcomeDenied && r.Code == codes.PermissionDenied.String() {
					recs++
				}
				return nil
			})
			if recs != 1 {
				t.Errorf("%s as %s: %d denied records, want 1", m.Name, client, recs)
			}
		}
	}
	if refusals < len(server.Methods) {
		t.Fatalf("only %d refusals tried for %d methods", refusals, len(server.Methods))
	}
}

// invokeEmpty calls m with an empty request of its input type.
func invokeEmpty(t *testing.T, conn *grpc.ClientConn, m *server.Method) error {
	t.Helper()
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(m.Service + "." + m.Name))
	if err != nil {
		t.Fatal(err)
	}
	md := d.(protoreflect.MethodDescriptor)
	req, resp := dynamicpb.NewMessage(md.Input()), dynamicpb.NewMessage(md.Output())
	c, cancel := context.WithTimeout(ctx(t), 20e9)
	defer cancel()
	if !m.Stream {
		return conn.Invoke(c, m.FullName(), req, resp)
	}
	s, err := conn.NewStream(c, &grpc.StreamDesc{ServerStreams: true}, m.FullName())
	if err != nil {
		return err
	}
	if err := s.SendMsg(req); err != nil {
		return err
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	return s.RecvMsg(resp)
}

func TestReportClassOfBatchItemsIsTheirBatchs(t *testing.T) {
	for method, want := range map[string]server.ReportClass{
		"Decrypt": server.ReportOpen, "BatchDecrypt[0]": server.ReportOpen, "BatchDecrypt[99]": server.ReportOpen,
		"BatchDecrypt": server.ReportNone, "BatchUnwrap[3]": server.ReportOpen, "FetchDataKey": server.ReportOpen,
		"Rewrap": server.ReportOpen, "Unwrap": server.ReportOpen, "Encrypt": server.ReportNone, "BatchEncrypt[1]": server.ReportNone,
		"GenerateDataKey": server.ReportGenerate, "DeleteDataKey": server.ReportNone, "Decrypt[0]": server.ReportNone, "unknown": server.ReportNone,
	} {
		if got := server.ReportClassOf(method); got != want {
			t.Errorf("ReportClassOf(%q) = %v, want %v", method, got, want)
		}
	}
	if got := strings.Join(server.ReportMethods(), ","); got != "Decrypt,GenerateDataKey,Unwrap,Rewrap,BatchDecrypt,BatchUnwrap,FetchDataKey" {
		t.Errorf("ReportMethods() = %s", got)
	}
}

// docs/api.md's table of methods is Methods, rendered. Regenerate it with
// CUSTODY_UPDATE_DOCS=1 go test -run TestAPIDocTableIsTheDeclaration ./internal/server/
func TestAPIDocTableIsTheDeclaration(t *testing.T) {
	const begin, end = "<!-- methods:begin (generated from internal/server Methods) -->\n", "<!-- methods:end -->"
	path := filepath.Join("..", "..", "docs", "api.md")
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i, j := bytes.Index(doc, []byte(begin)), bytes.Index(doc, []byte(end))
	if i < 0 || j < i {
		t.Fatalf("%s has no generated methods section", path)
	}
	want := server.MethodsMarkdown()
	if got := string(doc[i+len(begin) : j]); got != want {
		if os.Getenv("CUSTODY_UPDATE_DOCS") == "1" {
			out := append(append(append([]byte{}, doc[:i+len(begin)]...), want...), doc[j:]...)
			if err := os.WriteFile(path, out, 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Fatalf("docs/api.md's methods table differs from server.Methods; regenerate with CUSTODY_UPDATE_DOCS=1. Want:\n%s", want)
	}
}
