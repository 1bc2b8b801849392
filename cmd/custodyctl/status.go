package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

func (a *app) statusCommand() *cobra.Command {
	var service string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask custodyd whether it is serving, sealed, and where its HSM PIN comes from",
		Long: `Calls the standard gRPC health service over mTLS, and the seal service: a
sealed custodyd reports k-of-M unseal progress; a vault whose PIN is in
pin_file/pin_env says so. Exits 0 when custodyd reports SERVING, 1 otherwise.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			var st *custodyv1.SealStatus
			if service == "" {
				st, _ = custodyv1.NewSealServiceClient(conn).GetSealStatus(ctx, &custodyv1.GetSealStatusRequest{})
			}
			text := func(w io.Writer) {
				fmt.Fprintf(w, "%s %s\n", a.addr, resp.GetStatus())
				if st != nil {
					printSealStatus(w, st)
				}
			}
			var err2 error
			if a.output == "json" && st != nil {
				err2 = a.emitValue(map[string]any{"status": resp.GetStatus().String(), "seal": st.GetState().String(),
					"pin_source": st.GetPinSource(), "shares_accepted": st.GetSharesAccepted(), "shares_needed": st.GetSharesNeeded()}, text)
			} else {
				err2 = a.emit(resp, text)
			}
			if err2 != nil {
				return err2
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return localError(codes.Unavailable, fmt.Errorf("custodyd at %s is %s", a.addr, resp.GetStatus()))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&service, "service", "", `health service name to check; "" for the whole server`)
	return cmd
}
