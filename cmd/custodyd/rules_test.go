package main

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// TestCapacityAlertRulesReferToExposedMetrics: every custody_ metric the
// custody-capacity alert group reads is exposed by a running custodyd, so
// a renamed metric cannot silently disarm an alert (promtool's unit tests
// use synthetic series and would not notice).
func TestCapacityAlertRulesReferToExposedMetrics(t *testing.T) {
	rules, err := os.ReadFile("../../deploy/prometheus/custody-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, group, ok := strings.Cut(string(rules), "- name: custody-capacity")
	if !ok {
		t.Fatal("no custody-capacity group in custody-rules.yaml")
	}
	if i := strings.Index(group, "\n  - name:"); i >= 0 {
		group = group[:i]
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`\bcustody_[a-z_]+`).FindAllString(group, -1) {
		names[m] = true
	}
	if len(names) < 5 {
		t.Fatalf("found only %v in the capacity rules", names)
	}
	v := startVault(t, buildBinary(t), "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := custodyv1.NewCryptoServiceClient(dialRole(t, v.dir, v.grpc, "relay")).Encrypt(ctx,
		&custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	body := v.metrics(t)
	for n := range names {
		if !strings.Contains(body, "# TYPE "+n+" ") {
			t.Errorf("alert rules read %s, which custodyd does not expose", n)
		}
	}
}
