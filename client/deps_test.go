package client

import (
	"os/exec"
	"strings"
	"testing"
)

// TestClientDoesNotPullInTheGatewayRuntime keeps relays that import this
// package free of the REST gateway's runtime (and its HTTP dependencies):
// the gateway handlers live in api/custody/v1/gw, which only custodyd uses.
func TestClientDoesNotPullInTheGatewayRuntime(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps printed too little to judge: %q", out)
	}
	for _, d := range deps {
		if strings.Contains(d, "grpc-gateway") || strings.HasSuffix(d, "/api/custody/v1/gw") {
			t.Errorf("client depends on %s", d)
		}
	}
}
