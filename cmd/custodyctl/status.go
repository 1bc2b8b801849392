package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/client"
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
			if err := a.emit(resp, func(w io.Writer) { fmt.Fprintf(w, "%s %s\n", a.addr, resp.GetStatus()) }); err != nil {
				return err
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

// statusEach asks every replica on its own connection (no balancing, so a
// replica that is not serving is seen as such) and prints one line each.
func (a *app) statusEach(ctx context.Context, eps []string, service string) error {
	cfg, err := a.tlsConfig()
	if err != nil {
		return err
	}
	bad := 0
	for _, ep := range eps {
		conn, err := grpc.NewClient("dns:///"+ep, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
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
