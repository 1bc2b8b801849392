// Tests of the deployment files: the Helm chart (helm lint and helm
// template with the pinned helm from tools/helm), the Prometheus alert rules
// (promtool check and unit tests) and the Grafana dashboard, whose metric
// names must all exist in a real custodyd's /metrics.
package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"go.yaml.in/yaml/v3"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/daemon"
	"github.com/custodyhq/custody/internal/store/etcdtest"
	"github.com/custodyhq/custody/internal/testenv"
)

const chart = "helm/custody"

// helmBinary returns bin/helm of the version tools/helm pins, building it
// when missing (minutes, once; `make test` builds it before the tests).
func helmBinary(t *testing.T) string {
	t.Helper()
	root, err := etcdtest.Root()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin", "helm")
	build := "cd " + root + "/tools/helm && go build -o ../../bin/helm helm.sh/helm/v3/cmd/helm"
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(root, "bin", ".helm.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(bin); err != nil {
		t.Logf("building helm into %s (minutes, once)", bin)
		cmd := exec.Command("go", "build", "-o", bin, "helm.sh/helm/v3/cmd/helm")
		cmd.Dir = filepath.Join(root, "tools", "helm")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("helm is needed and could not be built: %v\n%s\nrun: %s", err, out, build)
		}
	}
	out, err := exec.Command(bin, "version", "--short").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "v3.") {
		t.Fatalf("%s version: %q, %v; rebuild with: %s", bin, out, err, build)
	}
	return bin
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// render runs helm template and returns the documents by kind.
func render(t *testing.T, helm string, args ...string) map[string][]map[string]any {
	t.Helper()
	out, err := run(t, helm, append([]string{"template", "rel", chart}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	docs := map[string][]map[string]any{}
	dec := yaml.NewDecoder(strings.NewReader(out))
	for {
		var d map[string]any
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("rendered chart is not YAML: %v", err)
		}
		if d != nil {
			k, _ := d["kind"].(string)
			docs[k] = append(docs[k], d)
		}
	}
	return docs
}

// dig walks nested maps and lists ("spec", "template", 0, ...).
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func TestHelmChartLintsAndRendersWhatAClusterNeeds(t *testing.T) {
	helm := helmBinary(t)
	for _, args := range [][]string{nil, {"-f", chart + "/ci/test-values.yaml"}} {
		if out, err := run(t, helm, append([]string{"lint", "--strict", chart}, args...)...); err != nil {
			t.Fatalf("helm lint --strict %v: %v\n%s", args, err, out)
		}
	}
	docs := render(t, helm, "-f", chart+"/ci/test-values.yaml")
	for kind, n := range map[string]int{"StatefulSet": 1, "Service": 2, "ConfigMap": 1, "PodDisruptionBudget": 1,
		"NetworkPolicy": 1, "ServiceMonitor": 1, "Secret": 3} {
		if len(docs[kind]) != n {
			t.Errorf("%d %s rendered, want %d", len(docs[kind]), kind, n)
		}
	}
	sts := docs["StatefulSet"][0]
	c := dig(sts, "spec", "template", "spec", "containers", 0)
	if p := dig(c, "livenessProbe", "httpGet", "path"); p != "/healthz" {
		t.Errorf("liveness probe path %v, want /healthz", p)
	}
	if p := dig(c, "readinessProbe", "httpGet", "path"); p != "/readyz" {
		t.Errorf("readiness probe path %v, want /readyz", p)
	}
	for _, r := range []string{"requests", "limits"} {
		if dig(c, "resources", r, "memory") == nil || dig(c, "resources", r, "cpu") == nil {
			t.Errorf("resources.%s lacks cpu or memory: %v", r, dig(c, "resources"))
		}
	}
	if dig(c, "securityContext", "readOnlyRootFilesystem") != true {
		t.Error("root filesystem is writable")
	}
	if dig(sts, "spec", "template", "spec", "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution") == nil {
		t.Error("antiAffinity: preferred did not render a preferred pod anti-affinity")
	}
	var secretVols []string
	vols, _ := dig(sts, "spec", "template", "spec", "volumes").([]any)
	for _, v := range vols {
		if s, ok := dig(v, "secret", "secretName").(string); ok {
			secretVols = append(secretVols, s)
		}
	}
	slices.Sort(secretVols)
	if want := []string{"custody-client-ca", "custody-etcd-client", "custody-hsm-pin", "custody-server-tls"}; !slices.Equal(secretVols, want) {
		t.Errorf("secret volumes %v, want %v", secretVols, want)
	}
	if dig(docs["ServiceMonitor"][0], "spec", "endpoints", 0, "port") != "http" || dig(docs["ServiceMonitor"][0], "spec", "jobLabel") != "custody.io/job" {
		t.Errorf("service monitor: %v", docs["ServiceMonitor"][0]["spec"])
	}
	if dig(docs["PodDisruptionBudget"][0], "spec", "maxUnavailable") != 1 {
		t.Errorf("pdb: %v", docs["PodDisruptionBudget"][0]["spec"])
	}
	if types := dig(docs["NetworkPolicy"][0], "spec", "policyTypes"); len(types.([]any)) != 2 {
		t.Errorf("network policy types %v, want Ingress and Egress", types)
	}

	// The rendered custodyd.yaml is one custodyd's strict decoder accepts.
	raw, _ := dig(docs["ConfigMap"][0], "data", "custodyd.yaml").(string)
	cfg, err := config.Decode([]byte(raw))
	if err != nil {
		t.Fatalf("rendered custodyd.yaml refused: %v\n%s", err, raw)
	}
	cfg.ApplyDefaults()
	if cfg.Store.Backend != config.BackendEtcd || len(cfg.Store.Etcd.Endpoints) != 3 || cfg.Store.Path != "" ||
		cfg.Audit.CheckpointEvery != 500 || cfg.Audit.Dir != "/var/lib/custody/audit" || len(cfg.Identities) != 1 {
		t.Fatalf("rendered config: %+v", cfg)
	}
	// Default anti-affinity is the hard kind, and the chart refuses plaintext etcd.
	def := render(t, helm)
	if dig(def["StatefulSet"][0], "spec", "template", "spec", "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution") == nil {
		t.Error("default anti-affinity is not required")
	}
	if out, err := run(t, helm, "template", "rel", chart, "--set", "etcd.endpoints={http://etcd:2379}"); err == nil || !strings.Contains(out, "must use https") {
		t.Errorf("plaintext etcd endpoint accepted: %v\n%s", err, out)
	}
}

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is missing: apt-get install -y prometheus (softhsm-test/install.sh does it; make test runs that)")
	}
	return p
}

func TestAlertRulesPassPromtoolUnitTests(t *testing.T) {
	pt := promtool(t)
	if out, err := run(t, pt, "check", "rules", "prometheus/custody-rules.yaml"); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if out, err := run(t, pt, "test", "rules", "prometheus/custody-rules.test.yaml"); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

var metricRE = regexp.MustCompile(`\b(custody_[a-z0-9_]+|up)\b`)

// TestDashboardAndRulesUseRealMetricNames: every metric the Grafana
// dashboard and the alert rules query is exported by a real custodyd (or is
// Prometheus's own "up").
func TestDashboardAndRulesUseRealMetricNames(t *testing.T) {
	var dash struct {
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	b, err := os.ReadFile("grafana/custody-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	used := map[string]string{} // metric -> where
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] || len(p.Targets) == 0 {
			t.Errorf("panel %q: duplicate id or no query", p.Title)
		}
		ids[p.ID] = true
		for _, tg := range p.Targets {
			for _, m := range metricRE.FindAllString(tg.Expr, -1) {
				used[m] = "dashboard panel " + p.Title
			}
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	rb, err := os.ReadFile("prometheus/custody-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(rb, &rules); err != nil {
		t.Fatal(err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			for _, m := range metricRE.FindAllString(r.Expr, -1) {
				used[m] = "alert " + r.Alert
			}
		}
	}
	if len(used) < 10 {
		t.Fatalf("only %d metric names found in the dashboard and rules", len(used))
	}

	// A real custodyd that has served a few requests (histograms and
	// per-method counters appear with their first observation).
	e := testenv.Start(t, testenv.Settings{})
	relay := e.Crypto(t, "relay")
	ctx := context.Background()
	enc, err := relay.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: daemon.DevKey, Plaintext: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := relay.Decrypt(ctx, &custodyv1.DecryptRequest{KeyName: daemon.DevKey, Ciphertext: enc.Ciphertext}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + e.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	exported := map[string]bool{"up": true} // scraped-target health, made by Prometheus itself
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			exported[f[2]] = true
			if len(f) >= 4 && f[3] == "histogram" {
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					exported[f[2]+s] = true
				}
			}
		}
	}
	for m, where := range used {
		if !exported[m] {
			t.Errorf("%s queries %s, which custodyd does not export", where, m)
		}
	}
}
