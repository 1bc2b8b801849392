package server

import (
	"context"
	"fmt"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
)

// statusService implements custody.v1.StatusService: the HSM's state and
// what the capability probe decided, for `custodyctl status`.
type statusService struct {
	custodyv1.UnimplementedStatusServiceServer
	s *Server
}

// GetStatus implements StatusService (every role; see Methods).
func (ss statusService) GetStatus(ctx context.Context, _ *custodyv1.GetStatusRequest) (*custodyv1.VaultStatus, error) {
	out := &custodyv1.VaultStatus{Hsm: HSMStatus(ss.s.hsm)}
	if ss.s.gov != nil {
		out.VaultId = ss.s.gov.VaultID()
	}
	if f := ss.s.auditMark.Load(); f != nil {
		out.AuditMark = (*f)()
	}
	return out, nil
}

// SetAuditMarkStatus gives the status service what the daemon knows of the
// audit high-water mark on the token.
func (s *Server) SetAuditMarkStatus(f func() *custodyv1.AuditMarkStatus) { s.auditMark.Store(&f) }

// HSMStatus renders a module's state and capabilities.
func HSMStatus(m *hsm.Module) *custodyv1.HsmStatus {
	if m == nil {
		return &custodyv1.HsmStatus{State: "none"}
	}
	c := m.Capabilities()
	out := &custodyv1.HsmStatus{
		State: m.State().String(), Profile: c.Profile, Vendor: m.Profile().Vendor,
		Generation: c.Generation, MissingMechanisms: c.Missing,
	}
	for _, cp := range c.List() {
		pc := &custodyv1.HsmCapability{Name: cp.Name, Ok: cp.OK, Mode: cp.Mode, Verified: cp.Verified, Detail: cp.Detail}
		if cp.Mechanism.Code != 0 {
			pc.Mechanism, pc.MechanismCode = cp.Mechanism.Name, uint64(cp.Mechanism.Code)
			if pc.Mechanism == "" {
				pc.Mechanism = fmt.Sprintf("0x%X", cp.Mechanism.Code)
			}
		}
		out.Capabilities = append(out.Capabilities, pc)
	}
	return out
}
