package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func (a *app) statusCommand() *cobra.Command {
	var service string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask custodyd's gRPC health service whether it is serving",
		Long: `Calls the standard gRPC health service over mTLS. Exits 0 when custodyd
reports SERVING, 1 otherwise.`,
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
			if err := a.emit(resp, func(w io.Writer) { fmt.Fprintf(w, "%s %s\n", a.addr, resp.GetStatus()) }); err != nil {
				return err
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
