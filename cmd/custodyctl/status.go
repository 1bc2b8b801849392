package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/client"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

func (a *app) statusCommand() *cobra.Command {
	var service string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask custodyd whether it is serving or sealed, where its HSM PIN comes from, and what its HSM can do",
		Long: `Calls the standard gRPC health service over mTLS, then the seal service (a
sealed custodyd reports k-of-M unseal progress; a vault whose PIN is in
pin_file/pin_env says so) and, once unsealed, custodyd's StatusService: the
HSM's state, its vendor profile and, per capability (AES-GCM, RFC 5649 key
wrap, RSA-OAEP, HMAC, refusal to let non-extractable keys out), the mechanism
and parameter form the start-up probe chose, or why it is missing. A missing
capability makes only the calls that need it fail with FAILED_PRECONDITION.
Exits 0 when custodyd reports SERVING, 1 otherwise.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps := client.Endpoints(a.addr)
			if len(eps) > 1 {
				return a.statusEach(cmd.Context(), eps, service)
			}
			conn, err := a.connect()
			if err != nil {
				return err
			}
			ctx, cancel := a.callCtx(cmd.Context())
			defer cancel()
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
			if err != nil {
				return err
			}
			var seal *custodyv1.SealStatus
			if service == "" {
				seal, _ = custodyv1.NewSealServiceClient(conn).GetSealStatus(ctx, &custodyv1.GetSealStatusRequest{})
			}
			var vs *custodyv1.VaultStatus
			why := ""
			if resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				vs, why = vaultStatus(ctx, conn)
			}
			if err := a.emitStatus(resp, seal, vs); err != nil {
				return err
			}
			if why != "" {
				fmt.Fprintf(a.stderr, "custodyctl: hsm status not shown: %s\n", why)
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return remoteError(codes.Unavailable, fmt.Errorf("custodyd at %s is %s", a.addr, resp.GetStatus()))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&service, "service", "", `health service name to check; "" for the whole server`)
	return cmd
}

// vaultStatus asks StatusService for the HSM's status. A server without
// it (older, or a bare health endpoint) gives nil and no reason; a refusal
// gives nil and the reason.
func vaultStatus(ctx context.Context, conn grpc.ClientConnInterface) (*custodyv1.VaultStatus, string) {
	st, err := custodyv1.NewStatusServiceClient(conn).GetStatus(ctx, &custodyv1.GetStatusRequest{})
	switch status.Code(err) {
	case codes.OK:
		return st, ""
	case codes.Unimplemented:
		return nil, ""
	}
	return nil, status.Convert(err).Code().String() + ": " + status.Convert(err).Message()
}

func (a *app) emitStatus(health *healthpb.HealthCheckResponse, seal *custodyv1.SealStatus, vs *custodyv1.VaultStatus) error {
	h, mark := vs.GetHsm(), vs.GetAuditMark()
	if a.output == "json" {
		out := map[string]any{"status": health.GetStatus().String()}
		if seal != nil {
			out["seal"], out["pin_source"] = seal.GetState().String(), seal.GetPinSource()
			out["shares_accepted"], out["shares_needed"] = seal.GetSharesAccepted(), seal.GetSharesNeeded()
		}
		if h != nil {
			b, err := jsonMarshal.Marshal(h)
			if err != nil {
				return localError(codes.Internal, fmt.Errorf("encode json: %w", err))
			}
			out["hsm"] = json.RawMessage(b)
		}
		if mark != nil {
			b, err := jsonMarshal.Marshal(mark)
			if err != nil {
				return localError(codes.Internal, fmt.Errorf("encode json: %w", err))
			}
			out["audit_mark"] = json.RawMessage(b)
		}
		if v := vs.GetVaultId(); v != "" {
			out["vault"] = v
		}
		return a.emitValue(out, nil)
	}
	return a.emitValue(nil, func(w io.Writer) {
		fmt.Fprintf(w, "%s %s\n", a.addr, health.GetStatus())
		if v := vs.GetVaultId(); v != "" {
			fmt.Fprintf(w, "vault: %s\n", v)
		}
		if seal != nil {
			printSealStatus(w, seal)
		}
		if h != nil {
			writeHSMStatus(w, h)
		}
		if mark != nil {
			writeAuditMark(w, mark)
		}
	})
}

// writeAuditMark prints where the audit high-water mark is kept.
func writeAuditMark(w io.Writer, m *custodyv1.AuditMarkStatus) {
	if !m.GetOnToken() {
		fmt.Fprintf(w, "audit mark:  NOT ON THE TOKEN: %s\n", m.GetDetail())
		return
	}
	pos := "on the HSM token, not written yet (the first checkpoint writes it)"
	if m.GetTime() != "" {
		pos = fmt.Sprintf("on the HSM token at record %d, store revision %d, checkpoint of %s", m.GetSeq(), m.GetStoreRevision(), m.GetTime())
	}
	fmt.Fprintf(w, "audit mark:  %s\n             %s\n", pos, m.GetDetail())
}

// writeHSMStatus prints an HSM status as text (custodyctl status and
// custodyctl hsm check share it).
func writeHSMStatus(w io.Writer, h *custodyv1.HsmStatus) {
	fmt.Fprintf(w, "hsm: %s, profile %s (%s), probed at initialisation %d\n", h.GetState(), h.GetProfile(), h.GetVendor(), h.GetGeneration())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CAPABILITY\tOK\tMECHANISM\tMODE\tVERIFIED\tDETAIL")
	for _, c := range h.GetCapabilities() {
		mech := "-"
		if c.GetMechanism() != "" {
			mech = fmt.Sprintf("%s (0x%X)", c.GetMechanism(), c.GetMechanismCode())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.GetName(), yesNo(c.GetOk()), mech, dash(c.GetMode()),
			yesNo(c.GetVerified()), dash(c.GetDetail()))
	}
	_ = tw.Flush()
	if m := h.GetMissingMechanisms(); len(m) > 0 {
		fmt.Fprintf(w, "mechanisms missing (key purposes needing them are refused): %s\n", strings.Join(m, ", "))
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// statusEach asks every replica on its own connection (no balancing, so a
// replica that is not serving is seen as such) and prints one line each.
func (a *app) statusEach(ctx context.Context, eps []string, service string) error {
	cfg, err := a.tlsConfig()
	if err != nil {
		return err
	}
	bad := 0
	for _, ep := range eps {
		conn, err := grpc.NewClient("dns:///"+ep, explainedTLS(cfg)...)
		if err != nil {
			return usageErrorf("address %q: %v", ep, err)
		}
		cctx, cancel := a.callCtx(ctx)
		resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		_ = conn.Close()
		if err != nil {
			resp = &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_UNKNOWN}
			if a.output != "json" {
				fmt.Fprintf(a.stdout, "%s UNREACHABLE (%s)\n", ep, status.Code(err))
				bad++
				continue
			}
		}
		if err := a.emitValue(map[string]string{"addr": ep, "status": resp.GetStatus().String()}, func(w io.Writer) {
			fmt.Fprintf(w, "%s %s\n", ep, resp.GetStatus())
		}); err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			bad++
		}
	}
	if bad > 0 {
		return localError(codes.Unavailable, fmt.Errorf("%d of %d replicas are not serving", bad, len(eps)))
	}
	return nil
}
