package config

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/pki"
)

// plantedPIN is the PIN every test uses, so that any leak can be grepped
// for. shortPIN is under the length at which yaml truncates quoted values.
const (
	plantedPIN = "S3cretPin4711"
	shortPIN   = "Zq9x"
)

// env is a set of real files for a valid configuration.
type env struct {
	dir, cert, key, ca, pin, store, audit string
}

func newEnv(t *testing.T) env {
	t.Helper()
	dir := t.TempDir()
	p, err := pki.GenerateDev(filepath.Join(dir, "tls"), nil)
	if err != nil {
		t.Fatal(err)
	}
	e := env{
		dir:   dir,
		cert:  p.ServerCertFile,
		key:   p.ServerKeyFile,
		ca:    p.CAFile,
		pin:   filepath.Join(dir, "pin"),
		store: filepath.Join(dir, "data", "custody.db"),
		audit: filepath.Join(dir, "data", "audit"),
	}
	if err := os.WriteFile(e.pin, []byte(plantedPIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.audit, 0o700); err != nil {
		t.Fatal(err)
	}
	return e
}

// yaml returns a valid configuration; extra is appended verbatim.
func (e env) yaml(extra string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:8443
http_listen: 127.0.0.1:9090
tls:
  cert_file: %s
  key_file: %s
  client_ca_file: %s
hsm:
  uri: "pkcs11:token=custody;module-path=/usr/lib/softhsm/libsofthsm2.so"
  pin_file: %s
  max_sessions: 8
  recycle_after_session_objects: 1000
store:
  path: %s
audit:
  dir: %s
  checkpoint_every: 500
  checkpoint_interval: 30s
  segment_bytes: 8388608
keys:
  destroy_wait_default: 72h
  destroy_wait_min: 24h
  max_payload_bytes: 4096
  max_batch: 10
identities:
  - {name: relay-1, role: relay, uri: "spiffe://example.org/relay-1"}
  - name: officer-1
    role: officer
    spki_sha256: 3F6C1B0A4D2E5F7081929AA3B4C5D6E7F8091A2B3C4D5E6F708192A3B4C5D6E7
grants:
  - identity: relay-1
    keys: [k1, k2]
    operations: [datakey, unwrap]
    context_match: {tenant: acme}
    recipient_keys: [9B1C2D3E4F5061728394A5B6C7D8E9F00112233445566778899AABBCCDDEEFF0]
budgets:
  - {identity: relay-1, key: k1, rate: 50, burst: 100, volume: 10000, window: 24h}
  - {identity: relay-1, key: k2, rate: 50, burst: 100, volume: 10000, window: 24h}
`, e.cert, e.key, e.ca, e.pin, e.store, e.audit) + extra
}

func (e env) write(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(e.dir, fmt.Sprintf("custodyd-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (e env) valid(t *testing.T) *Config {
	t.Helper()
	cfg, err := Load(e.write(t, e.yaml("")))
	if err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	return cfg
}

func problemsOf(t *testing.T, err error) []Problem {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("err = %v; want a *ValidationError", err)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v; does not wrap ErrInvalid", err)
	}
	return ve.Problems
}

func TestLoadAcceptsValidConfig(t *testing.T) {
	e := newEnv(t)
	cfg := e.valid(t)
	if cfg.HSM.MaxSessions != 8 || cfg.HSM.RecycleAfterSessionObjects != 1000 || cfg.HSM.PINFile != e.pin || cfg.Audit.CheckpointInterval != 30*time.Second ||
		cfg.Keys.DestroyWaitDefault != 72*time.Hour || cfg.Store.Path != e.store || cfg.Keys.MaxBatch != 10 {
		t.Fatalf("fields not decoded: %+v", cfg)
	}
	if len(cfg.Identities) != 2 || cfg.Identities[0].Role != RoleRelay || cfg.Identities[1].Role != RoleOfficer {
		t.Fatalf("identities = %+v", cfg.Identities)
	}
	g := cfg.Grants[0]
	if g.Identity != "relay-1" || len(g.Keys) != 2 || len(g.Operations) != 2 || g.Operations[0] != OpDataKey ||
		g.ContextMatch["tenant"] != "acme" || g.AllowPlaintext {
		t.Fatalf("grant = %+v", g)
	}
	if d := g.RecipientKeyDigests(); len(d) != 1 || len(d[0]) != 32 || d[0][0] != 0x9b {
		t.Fatalf("recipient digests = %x", d)
	}
	pin, err := cfg.HSM.ReadPIN(context.Background())
	if err != nil || string(pin) != plantedPIN {
		t.Fatalf("ReadPIN = %q, %v", pin, err)
	}
}

func TestLoadAppliesDefaultsToOmittedFields(t *testing.T) {
	e := newEnv(t)
	cfg, err := Load(e.write(t, fmt.Sprintf(`tls: {cert_file: %s, key_file: %s, client_ca_file: %s}
hsm: {uri: "pkcs11:token=custody?module-path=/usr/lib/softhsm/libsofthsm2.so", pin_file: %s}
store: {path: %s}
audit: {dir: %s}
`, e.cert, e.key, e.ca, e.pin, e.store, e.audit)))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen: DefaultListen, HTTPListen: DefaultHTTPListen,
		TLS:   TLSConfig{CertFile: e.cert, KeyFile: e.key, ClientCAFile: e.ca},
		HSM:   HSMConfig{URI: "pkcs11:token=custody?module-path=/usr/lib/softhsm/libsofthsm2.so", PINFile: e.pin, MaxSessions: DefaultMaxSessions},
		Store: StoreConfig{Path: e.store},
		Audit: AuditConfig{Dir: e.audit, CheckpointEvery: DefaultCheckpointEvery,
			CheckpointInterval: DefaultCheckpointInterval, SegmentBytes: DefaultSegmentBytes},
		Keys: KeysConfig{DestroyWaitDefault: DefaultDestroyWait, DestroyWaitMin: DefaultDestroyWaitMin,
			MaxPayloadBytes: DefaultMaxPayloadBytes, MaxBatch: DefaultMaxBatch},
		Governance: GovernanceConfig{TimeLock: DefaultTimeLock, ProposalTTL: DefaultProposalTTL,
			Freeze: FreezeConfig{Refusals: DefaultFreezeRefusals, Within: DefaultFreezeWithin}},
		Seal: SealConfig{UnsealTimeout: DefaultUnsealTimeout, LeaseTTL: DefaultLeaseTTL},
	}
	want.Limits.applyDefaults()
	want.ReplicaID, _ = os.Hostname()
	if fmt.Sprintf("%+v", *cfg) != fmt.Sprintf("%+v", want) || !reflect.DeepEqual(cfg.HSM, want.HSM) {
		t.Fatalf("got  %+v\nwant %+v", *cfg, want)
	}
}

func TestLoadRejectsUnknownFieldsNamingEach(t *testing.T) {
	e := newEnv(t)
	content := strings.Replace(e.yaml("listn: 127.0.0.1:1\n"), "  max_sessions: 8", "  max_sessions: 8\n  pinfile: /x", 1)
	content = strings.Replace(content, "role: relay,", "role: relay, spiffe: x,", 1)
	_, err := Load(e.write(t, content))
	ps := problemsOf(t, err)
	msg := err.Error()
	for _, want := range []string{
		`listn: unknown field (line `,
		`hsm.pinfile: unknown field (line `, `did you mean "pin_file"?`,
		`identities[0].spiffe: unknown field`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if len(ps) != 3 {
		t.Fatalf("got %d problems, want 3: %v", len(ps), ps)
	}
}

func TestDecodeRejectsMalformedYAML(t *testing.T) {
	cases := map[string]struct{ yaml, want string }{
		"empty":             {"", "empty configuration"},
		"comment only":      {"# nothing\n", "empty configuration"},
		"two documents":     {"listen: a:1\n---\nlisten: b:1\n", "more than one yaml document"},
		"duplicate key":     {"listen: a:1\nlisten: b:1\n", `"listen" already defined`},
		"string for int":    {"hsm:\n  max_sessions: lots\n", "hsm.max_sessions: wrong type: got str, want int (line 2)"},
		"int for duration":  {"audit:\n  checkpoint_interval: 60\n", `audit.checkpoint_interval: wrong type: got int, want duration such as "60s"`},
		"scalar for list":   {"grants: relay-1\n", "grants: wrong type: got str, want list"},
		"scalar for struct": {"hsm: true\n", "hsm: wrong type: got bool, want mapping"},
		"syntax":            {"hsm: [\n", "yaml:"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Decode([]byte(c.yaml))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v; want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %q; want it to contain %q", err, c.want)
			}
		})
	}
}

// TestValidateNamesFieldPathOfEachProblem breaks one field at a time and
// expects exactly one problem, naming that field.
func TestValidateNamesFieldPathOfEachProblem(t *testing.T) {
	e := newEnv(t)
	dirAsFile := filepath.Join(e.dir, "data")
	cases := []struct {
		name   string
		mutate func(c *Config)
		path   string
		want   string
	}{
		{"listen not host:port", func(c *Config) { c.Listen = "8443" }, "listen", "is not host:port"},
		{"listen bad port", func(c *Config) { c.Listen = "127.0.0.1:99999" }, "listen", "0 to 65535"},
		{"http_listen bad host", func(c *Config) { c.HTTPListen = "bad_host!:80" }, "http_listen", "neither an IP"},
		{"http_listen equals listen", func(c *Config) { c.HTTPListen = c.Listen }, "http_listen", "must differ from listen"},
		{"gateway_listen bad port", func(c *Config) { c.GatewayListen = "127.0.0.1:x" }, "gateway_listen", "0 to 65535"},
		{"gateway_listen equals listen", func(c *Config) { c.GatewayListen = c.Listen }, "gateway_listen", "must differ from listen and http_listen"},
		{"cert missing", func(c *Config) { c.TLS.CertFile = "" }, "tls.cert_file", "is required"},
		{"cert relative", func(c *Config) { c.TLS.CertFile = "server.pem" }, "tls.cert_file", "absolute path"},
		{"cert absent", func(c *Config) { c.TLS.CertFile = "/nonexistent/server.pem" }, "tls.cert_file", "does not exist"},
		{"ca is a dir", func(c *Config) { c.TLS.ClientCAFile = dirAsFile }, "tls.client_ca_file", "not a regular file"},
		{"uri empty", func(c *Config) { c.HSM.URI = "" }, "hsm.uri", "is required"},
		{"uri scheme", func(c *Config) { c.HSM.URI = "token=custody" }, "hsm.uri", `must start with "pkcs11:"`},
		{"uri pin-value", func(c *Config) { c.HSM.URI = "pkcs11:token=x?pin-value=1" }, "hsm.uri", "must not carry pin-value"},
		{"uri typo", func(c *Config) { c.HSM.URI = "pkcs11:tokn=x?module-path=/l.so" }, "hsm.uri", `unknown attribute "tokn"`},
		{"uri two token selectors", func(c *Config) { c.HSM.URI = "pkcs11:token=x;serial=1?module-path=/l.so" }, "hsm.uri", "exactly one of token="},
		{"no pin source in dev", func(c *Config) { c.HSM.PINFile, c.Dev = "", true }, "hsm", "a dev instance needs one of pin_file and pin_env"},
		{"unseal timeout too short", func(c *Config) { c.Seal.UnsealTimeout = time.Second }, "seal.unseal_timeout", "out of range"},
		{"lease ttl too long", func(c *Config) { c.Seal.LeaseTTL = time.Hour }, "seal.lease_ttl", "out of range"},
		{"two pin sources", func(c *Config) { c.HSM.PINEnv = "X" }, "hsm", "mutually exclusive"},
		{"pin file relative", func(c *Config) { c.HSM.PINFile = "pin" }, "hsm.pin_file", "absolute path"},
		{"pin file absent", func(c *Config) { c.HSM.PINFile = "/nonexistent/pin" }, "hsm.pin_file", "does not exist"},
		{"pin file is dir", func(c *Config) { c.HSM.PINFile = dirAsFile }, "hsm.pin_file", "is not a regular file"},
		{"pin env bad name", func(c *Config) { c.HSM.PINFile, c.HSM.PINEnv = "", "1-PIN" }, "hsm.pin_env", "not a valid environment variable name"},
		{"pin env unset", func(c *Config) { c.HSM.PINFile, c.HSM.PINEnv = "", "CUSTODY_TEST_UNSET_PIN" }, "hsm.pin_env", "not set or is empty"},
		{"max sessions zero", func(c *Config) { c.HSM.MaxSessions = -1 }, "hsm.max_sessions", "out of range"},
		{"max sessions big", func(c *Config) { c.HSM.MaxSessions = 5000 }, "hsm.max_sessions", "out of range"},
		{"unknown hsm profile", func(c *Config) { c.HSM.Profile = "thales" }, "hsm.profile", `"thales" is not one of cloudhsm, generic`},
		{"init args with a NUL", func(c *Config) { c.HSM.InitArgs = "configdir='x'\x00" }, "hsm.init_args", "NUL"},
		{"init args too long", func(c *Config) { c.HSM.InitArgs = strings.Repeat("x", 5000) }, "hsm.init_args", "at most 4096"},
		{"deny mechanism not a number", func(c *Config) { c.HSM.DenyMechanisms = []string{"CKM_AES_GCM"} }, "hsm.deny_mechanisms", "write it as 0x1087"},
		{"recycle below -1", func(c *Config) { c.HSM.RecycleAfterSessionObjects = -2 }, "hsm.recycle_after_session_objects", "out of range"},
		{"store relative", func(c *Config) { c.Store.Path = "custody.db" }, "store.path", "absolute path"},
		{"store dir missing", func(c *Config) { c.Store.Path = "/nonexistent/custody.db" }, "store.path", `parent directory "/nonexistent" does not exist`},
		{"store is dir", func(c *Config) { c.Store.Path = dirAsFile }, "store.path", "not a regular file"},
		{"audit dir missing", func(c *Config) { c.Audit.Dir = "/nonexistent/audit" }, "audit.dir", "does not exist"},
		{"audit dir is file", func(c *Config) { c.Audit.Dir = e.pin }, "audit.dir", "is not a directory"},
		{"checkpoint every", func(c *Config) { c.Audit.CheckpointEvery = -5 }, "audit.checkpoint_every", "at least 1"},
		{"checkpoint interval", func(c *Config) { c.Audit.CheckpointInterval = time.Millisecond }, "audit.checkpoint_interval", "out of range"},
		{"segment bytes", func(c *Config) { c.Audit.SegmentBytes = 1024 }, "audit.segment_bytes", "out of range"},
		{"destroy wait min below a day", func(c *Config) { c.Keys.DestroyWaitMin = time.Hour }, "keys.destroy_wait_min", "only a dev instance"},
		{"destroy wait min negative", func(c *Config) { c.Keys.DestroyWaitMin = -time.Hour; c.Dev = true }, "keys.destroy_wait_min", "must be positive"},
		{"destroy wait default below min", func(c *Config) { c.Keys.DestroyWaitDefault = 25 * time.Hour; c.Keys.DestroyWaitMin = 48 * time.Hour }, "keys.destroy_wait_default", "below keys.destroy_wait_min"},
		{"max payload", func(c *Config) { c.Keys.MaxPayloadBytes = 2 << 20 }, "keys.max_payload_bytes", "out of range"},
		{"max batch", func(c *Config) { c.Keys.MaxBatch = 0 }, "keys.max_batch", "out of range"},
		{"identity name", func(c *Config) { c.Identities[1].Name = "Officer 1" }, "identities[1].name", "must match"},
		{"identity name dup", func(c *Config) { c.Identities[1].Name = "relay-1" }, "identities[1].name", "defined more than once"},
		{"identity role", func(c *Config) { c.Identities[0].Role = "admin" }, "identities[0].role", `"admin" is not one of relay, operator, officer, auditor`},
		{"identity no role", func(c *Config) { c.Identities[1].Role = "" }, "identities[1].role", "is required"},
		{"identity both ids", func(c *Config) { c.Identities[0].SPKISHA256 = strings.Repeat("a", 64) }, "identities[0]", "mutually exclusive"},
		{"identity no id", func(c *Config) { c.Identities[1].SPKISHA256 = "" }, "identities[1]", "one of spki_sha256 and uri is required"},
		{"identity spki short", func(c *Config) { c.Identities[1].SPKISHA256 = "abcd" }, "identities[1].spki_sha256", "64 hex digits"},
		{"identity uri not spiffe", func(c *Config) { c.Identities[0].URI = "https://example.org/relay" }, "identities[0].uri", "must be a SPIFFE ID"},
		{"identity uri query", func(c *Config) { c.Identities[0].URI = "spiffe://example.org/relay?x=1" }, "identities[0].uri", "query or fragment"},
		{"identity uri upper domain", func(c *Config) { c.Identities[0].URI = "spiffe://Example.org/relay" }, "identities[0].uri", "lower-case trust domain"},
		{"identity uri no path", func(c *Config) { c.Identities[0].URI = "spiffe://example.org" }, "identities[0].uri", "must have a path"},
		{"identity uri spki scheme", func(c *Config) { c.Identities[0].URI = "spki:" + strings.Repeat("a", 64) }, "identities[0].uri", "must be a SPIFFE ID"},
		{"same cert twice", func(c *Config) {
			c.Identities = append(c.Identities, IdentityConfig{Name: "officer-2", Role: RoleAuditor, SPKISHA256: strings.ToLower(c.Identities[1].SPKISHA256)})
		}, "identities[2]", `same certificate identity as "officer-1"`},
		{"grant unknown identity", func(c *Config) { c.Grants[0].Identity = "relay-9" }, "grants[0].identity", "not defined in identities"},
		{"grant to officer", func(c *Config) { c.Grants[0].Identity = "officer-1" }, "grants[0].identity", "relay identities only"},
		{"grant no keys", func(c *Config) { c.Grants[0].Keys = nil }, "grants[0].keys", "at least one key"},
		{"grant wildcard", func(c *Config) { c.Grants[0].Keys[1] = "*" }, "grants[0].keys[1]", "wildcards are not allowed"},
		{"grant glob", func(c *Config) { c.Grants[0].Keys[0] = "messages-*" }, "grants[0].keys[0]", "wildcards are not allowed"},
		{"grant bad key name", func(c *Config) { c.Grants[0].Keys[0] = "a b" }, "grants[0].keys[0]", "not one of [A-Za-z0-9._-]"},
		{"grant dup key", func(c *Config) { c.Grants[0].Keys[1] = "k1" }, "grants[0].keys[1]", "more than once"},
		{"grant no ops", func(c *Config) { c.Grants[0].Operations = nil }, "grants[0].operations", "at least one operation"},
		{"grant bad op", func(c *Config) { c.Grants[0].Operations[1] = "export" }, "grants[0].operations[1]", `"export" is not one of encrypt, decrypt`},
		{"grant dup op", func(c *Config) { c.Grants[0].Operations[1] = OpDataKey }, "grants[0].operations[1]", "more than once"},
		{"grant empty context key", func(c *Config) { c.Grants[0].ContextMatch[""] = "x" }, "grants[0].context_match", "keys must not be empty"},
		{"grant bad recipient", func(c *Config) { c.Grants[0].RecipientKeys[0] = "abc" }, "grants[0].recipient_keys[0]", "64 hex digits"},
		{"grant dup recipient", func(c *Config) {
			c.Grants[0].RecipientKeys = append(c.Grants[0].RecipientKeys, strings.ToLower(c.Grants[0].RecipientKeys[0]))
		}, "grants[0].recipient_keys[1]", "more than once"},
		{"grant datakey goes nowhere", func(c *Config) { c.Grants[0].RecipientKeys = nil }, "grants[0]", "need recipient_keys or allow_plaintext"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := e.valid(t)
			c.mutate(cfg)
			ps := problemsOf(t, cfg.Validate())
			if len(ps) != 1 {
				t.Fatalf("got %d problems, want 1: %v", len(ps), ps)
			}
			if ps[0].Path != c.path || !strings.Contains(ps[0].Message, c.want) {
				t.Fatalf("problem %q; want path %q and message containing %q", ps[0], c.path, c.want)
			}
		})
	}
}

// TestProductionConfigWithoutPINSourceIsSealed: no pin_file and no pin_env
// is not an error outside dev: custodyd starts sealed.
func TestProductionConfigWithoutPINSourceIsSealed(t *testing.T) {
	e := newEnv(t)
	cfg := e.valid(t)
	cfg.HSM.PINFile = ""
	if err := cfg.Validate(); err != nil {
		t.Fatalf("sealed production config: %v", err)
	}
	if !cfg.HSM.Sealed() || cfg.HSM.PINSourceName() != "" {
		t.Fatal("not reported as sealed")
	}
	cfg.HSM.PINEnv = "CUSTODY_TEST_SOME_PIN"
	if cfg.HSM.Sealed() || cfg.HSM.PINSourceName() != "pin_env" {
		t.Fatal("pin_env not reported")
	}
}

func TestValidateAllowsShortDestroyWaitOnlyInDev(t *testing.T) {
	e := newEnv(t)
	cfg := e.valid(t)
	cfg.Keys.DestroyWaitMin, cfg.Keys.DestroyWaitDefault = time.Minute, time.Minute
	if err := cfg.Validate(); err == nil {
		t.Fatal("a production config accepted destroy_wait_min of 1m")
	}
	cfg.Dev = true
	if err := cfg.Validate(); err != nil {
		t.Fatalf("dev config refused: %v", err)
	}
}

func TestValidateReportsAllProblemsTogether(t *testing.T) {
	e := newEnv(t)
	content := strings.NewReplacer(
		"max_sessions: 8", "max_sessions: 0\n  pin_env: CUSTODY_PIN",
		"checkpoint_interval: 30s", "checkpoint_interval: 1ms",
		"role: relay,", "role: root,",
		"operations: [datakey, unwrap]", "operations: [datakey, export]",
	).Replace(e.yaml(""))
	// max_sessions 0 becomes the default; the others stay wrong. The grant
	// to the identity with a bad role is not reported a second time.
	_, err := Load(e.write(t, content))
	ps := problemsOf(t, err)
	var paths []string
	for _, p := range ps {
		paths = append(paths, p.Path)
	}
	want := []string{"hsm", "audit.checkpoint_interval", "identities[0].role", "grants[0].operations[1]"}
	if strings.Join(paths, ",") != strings.Join(want, ",") {
		t.Fatalf("problem paths %v; want %v", paths, want)
	}
	if strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "(4 problems)") {
		t.Fatalf("error is not one line counting 4 problems: %q", err)
	}
}

func TestPINFileReadableByOthersIsRefused(t *testing.T) {
	e := newEnv(t)
	cfg := e.valid(t)
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		if err := os.Chmod(e.pin, mode); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("hsm.pin_file: file is readable by group or others (mode %#o); chmod 600 it", mode)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Validate with mode %#o: %v; want %q", mode, err, want)
		}
		pin, err := cfg.HSM.ReadPIN(context.Background())
		if !errors.Is(err, ErrPIN) || pin != nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("ReadPIN with mode %#o = %q, %v; want refusal %q", mode, pin, err, want)
		}
	}
	if err := os.Chmod(e.pin, 0o620); err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.HSM.ReadPIN(context.Background()); !errors.Is(err, ErrPIN) || !strings.Contains(err.Error(), "accessible by group or others") {
		t.Fatalf("group-writable PIN file: %v", err)
	}
	if err := os.Chmod(e.pin, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.HSM.ReadPIN(context.Background()); err != nil {
		t.Fatalf("0400 PIN file refused: %v", err)
	}
}

func TestReadPINFromFile(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct{ content, want string }{
		"newline":       {"1234\n", "1234"},
		"crlf":          {"1234\r\n", "1234"},
		"no newline":    {"1234", "1234"},
		"only one trim": {"1234\n\n", "1234\n"},
		"spaces kept":   {" 12 34 ", " 12 34 "},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f := filepath.Join(dir, name)
			if err := os.WriteFile(f, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			h := HSMConfig{PINFile: f}
			pin, err := h.ReadPIN(context.Background())
			if err != nil || string(pin) != c.want {
				t.Fatalf("ReadPIN = %q, %v; want %q", pin, err, c.want)
			}
		})
	}
}

func TestReadPINFollowsSymlinkToPrivateFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "..data-pin")
	if err := os.WriteFile(target, []byte(plantedPIN), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "pin")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	h := HSMConfig{PINFile: link}
	if pin, err := h.PIN(); err != nil || string(pin) != plantedPIN {
		t.Fatalf("PIN via symlink = %q, %v", pin, err)
	}
}

func TestReadPINRefusesBadSources(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CUSTODY_TEST_EMPTY_PIN", "")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	cases := map[string]struct {
		h    HSMConfig
		ctx  context.Context
		want string
	}{
		"empty file": {HSMConfig{PINFile: empty}, nil, "file is empty"},
		"huge file":  {HSMConfig{PINFile: big}, nil, "larger than"},
		"directory":  {HSMConfig{PINFile: dir}, nil, "not a regular file"},
		"fifo":       {HSMConfig{PINFile: fifo}, nil, "not a regular file"},
		"missing":    {HSMConfig{PINFile: filepath.Join(dir, "nope")}, nil, "does not exist"},
		"env empty":  {HSMConfig{PINEnv: "CUSTODY_TEST_EMPTY_PIN"}, nil, "not set or is empty"},
		"env unset":  {HSMConfig{PINEnv: "CUSTODY_TEST_UNSET_PIN"}, nil, "not set or is empty"},
		"no source":  {HSMConfig{}, nil, "neither pin_file nor pin_env"},
		"both":       {HSMConfig{PINFile: empty, PINEnv: "X"}, nil, "mutually exclusive"},
		"cancelled":  {HSMConfig{PINEnv: "X"}, cancelled, "context canceled"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			ctx := c.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			pin, err := c.h.ReadPIN(ctx)
			if !errors.Is(err, ErrPIN) || pin != nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ReadPIN = %q, %v; want ErrPIN containing %q", pin, err, c.want)
			}
		})
	}
}

func TestReadPINFromEnv(t *testing.T) {
	t.Setenv("CUSTODY_TEST_PIN", plantedPIN)
	h := HSMConfig{PINEnv: "CUSTODY_TEST_PIN"}
	if pin, err := h.ReadPIN(context.Background()); err != nil || string(pin) != plantedPIN {
		t.Fatalf("ReadPIN = %q, %v", pin, err)
	}
}

// TestPINNeverAppearsInErrorsOrStrings plants the PIN everywhere an operator
// could put it by mistake and checks every error and rendering.
func TestPINNeverAppearsInErrorsOrStrings(t *testing.T) {
	e := newEnv(t)
	t.Setenv(plantedPIN, "") // a PIN that is also a valid, empty variable name
	var outputs []string
	record := func(err error) {
		if err == nil {
			t.Fatal("expected an error")
		}
		outputs = append(outputs, err.Error())
	}

	// The PIN file is world-readable: Validate, ReadPIN and Load refuse it.
	if err := os.Chmod(e.pin, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(e.write(t, e.yaml("")))
	record(err)
	h := HSMConfig{PINFile: e.pin}
	_, err = h.ReadPIN(context.Background())
	record(err)

	// The PIN pasted into every field it could be confused with.
	mutations := []func(string) string{
		func(s string) string { return strings.Replace(s, "pin_file: "+e.pin, "pin_env: "+plantedPIN, 1) },
		func(s string) string { return strings.Replace(s, "pin_file: "+e.pin, "pin_env: x-"+plantedPIN, 1) },
		func(s string) string { return strings.Replace(s, "pin_file: "+e.pin, "pin_file: "+plantedPIN, 1) },
		func(s string) string {
			return strings.Replace(s, "pin_file: "+e.pin, "pin_file: /nonexistent/"+plantedPIN, 1)
		},
		func(s string) string {
			return strings.Replace(s, "pin_file: "+e.pin, "pin_file: "+e.pin+"\n  pin_env: "+plantedPIN, 1)
		},
		func(s string) string {
			return strings.Replace(s, "libsofthsm2.so", "libsofthsm2.so?pin-value="+plantedPIN, 1)
		},
		func(s string) string { return strings.Replace(s, "max_sessions: 8", "max_sessions: "+plantedPIN, 1) },
		func(s string) string { return strings.Replace(s, "max_sessions: 8", "pin: "+plantedPIN, 1) },
		func(s string) string {
			return strings.Replace(s, "checkpoint_interval: 30s", "checkpoint_interval: "+plantedPIN, 1)
		},
		func(s string) string { return s + "hsm_pin: `" + plantedPIN + "`\n" },
		func(s string) string { return strings.Replace(s, "max_sessions: 8", "max_sessions: "+shortPIN, 1) },
		func(s string) string {
			return strings.Replace(s, "checkpoint_interval: 30s", "checkpoint_interval: "+shortPIN, 1)
		},
		func(s string) string { return strings.Replace(s, "keys: [k1, k2]", "keys: "+shortPIN, 1) },
		func(s string) string { return strings.Replace(s, "pin_file: "+e.pin, "pin_env: "+shortPIN, 1) },
	}
	for _, m := range mutations {
		content := m(e.yaml(""))
		if !strings.Contains(content, plantedPIN) && !strings.Contains(content, shortPIN) {
			t.Fatalf("mutation did not plant the PIN:\n%s", content)
		}
		_, err := Load(e.write(t, content))
		record(err)
		if c, derr := Decode([]byte(content)); derr == nil {
			c.ApplyDefaults()
			outputs = append(outputs, fmt.Sprintf("%v|%+v|%#v|%s", *c, *c, *c, c.HSM))
			_, perr := c.HSM.ReadPIN(context.Background())
			if perr != nil {
				outputs = append(outputs, perr.Error())
			}
		}
	}
	if len(outputs) < 12 {
		t.Fatalf("only %d outputs collected", len(outputs))
	}
	for _, out := range outputs {
		if strings.Contains(out, plantedPIN) || strings.Contains(out, shortPIN) {
			t.Errorf("PIN leaked in: %s", out)
		}
	}
}

func TestHSMConfigStringRedactsURIPIN(t *testing.T) {
	h := HSMConfig{URI: "pkcs11:token=a;pin-value=" + plantedPIN + ";x=y", PINEnv: "CUSTODY_HSM_PIN", MaxSessions: 4}
	s := h.String()
	if strings.Contains(s, plantedPIN) || strings.Contains(s, "CUSTODY_HSM_PIN") {
		t.Fatalf("String leaks: %s", s)
	}
	if !strings.Contains(s, "pin-value=REDACTED;x=y") || !strings.Contains(s, "pin_source:env") {
		t.Fatalf("String = %s", s)
	}
}

func TestExampleConfigLoads(t *testing.T) {
	e := newEnv(t)
	data, err := os.ReadFile("../../deploy/custodyd.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	content := strings.NewReplacer(
		"/etc/custody/tls/server.pem", e.cert,
		"/etc/custody/tls/server-key.pem", e.key,
		"/etc/custody/tls/client-ca.pem", e.ca,
		"/etc/custody/pin", e.pin,
		"/var/lib/custody/custody.db", e.store,
		"/var/lib/custody/audit", e.audit,
	).Replace(string(data))
	cfg, err := Load(e.write(t, content))
	if err != nil {
		t.Fatalf("example config refused: %v", err)
	}
	if len(cfg.Identities) != 5 || len(cfg.Grants) != 0 || !cfg.HSM.Sealed() {
		t.Fatalf("example decoded to %+v", cfg)
	}
	// The sections the docs point operators to are there, with the values
	// they describe.
	if cfg.GatewayListen != "127.0.0.1:8444" || cfg.Governance.TimeLock != 24*time.Hour || cfg.Governance.ProposalTTL != 720*time.Hour ||
		cfg.Governance.Freeze.Refusals != 100 || cfg.Governance.Freeze.Within != time.Minute {
		t.Fatalf("example's gateway_listen and governance sections decoded to %q, %+v", cfg.GatewayListen, cfg.Governance)
	}
	// The commented grants and budgets (they apply to dev vaults only) must
	// stay valid: uncommented, they load too.
	var dev strings.Builder
	inBlock := false
	for _, line := range strings.Split(content, "\n") {
		switch {
		case line == "# grants:" || line == "# budgets:":
			inBlock = true
		case strings.TrimSpace(line) == "":
			inBlock = false
		}
		if inBlock {
			line = strings.TrimPrefix(line, "# ")
		}
		dev.WriteString(line + "\n")
	}
	devCfg, err := Load(e.write(t, dev.String()))
	if err != nil {
		t.Fatalf("example's grants and budgets, uncommented: %v", err)
	}
	if len(devCfg.Grants) != 2 || len(devCfg.Budgets) != 3 {
		t.Fatalf("example's grants and budgets, uncommented: %d grants, %d budgets", len(devCfg.Grants), len(devCfg.Budgets))
	}
	// Without path rewriting it must fail only on the machine-specific paths.
	if _, err := Load(e.write(t, string(data))); err == nil {
		t.Fatal("example with /etc paths loaded on a test machine")
	}
}

func TestIdentityIDMatchesCertificateIdentity(t *testing.T) {
	p, err := pki.GenerateDev(t.TempDir(), []string{"relay"})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(mustRead(t, p.Clients["relay"].CertFile))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pki.Identity(cert)
	if err != nil {
		t.Fatal(err)
	}
	byURI := IdentityConfig{Name: "relay", Role: RoleRelay, URI: p.Clients["relay"].Identity}
	if byURI.ID() != want {
		t.Fatalf("uri identity %q != certificate identity %q", byURI.ID(), want)
	}
	if msg := spiffeProblem(byURI.URI); msg != "" {
		t.Fatalf("dev identity %q refused: %s", byURI.URI, msg)
	}

	spki := pki.SPKIIdentity(cert.RawSubjectPublicKeyInfo)
	hexDigest := strings.ToUpper(strings.TrimPrefix(spki, "spki:"))
	bySPKI := IdentityConfig{Name: "relay", Role: RoleRelay, SPKISHA256: hexDigest}
	if bySPKI.ID() != spki {
		t.Fatalf("spki identity %q != %q", bySPKI.ID(), spki)
	}
}

func mustRead(t *testing.T, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeHandlesAliasBombQuickly(t *testing.T) {
	var b strings.Builder
	b.WriteString("grants:\n  - &a0 {identity: x, keys: [k], operations: [sign]}\n")
	for i := 1; i < 40; i++ {
		fmt.Fprintf(&b, "  - &a%d [*a%d, *a%d, *a%d, *a%d]\n", i, i-1, i-1, i-1, i-1)
	}
	start := time.Now()
	_, err := Decode([]byte(b.String()))
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v; want ErrInvalid", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Decode took %v", d)
	}
}

func TestDecodeChecksFieldsInsideMergedAliases(t *testing.T) {
	_, err := Decode([]byte("base: &b {cert_file: /a, cert: /b}\ntls:\n  <<: *b\n"))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "base: unknown field") {
		t.Fatalf("err = %v", err)
	}
	_, err = Decode([]byte("x-base: &b {cert_file: /a, certfile: /b}\n"))
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
	cfg, err := Decode([]byte("hsm: &h {uri: 'pkcs11:'}\n"))
	if err != nil || cfg.HSM.URI != "pkcs11:" {
		t.Fatalf("anchored section: %+v, %v", cfg, err)
	}
	_, err = Decode([]byte("hsm: &h {uri: 'pkcs11:'}\ntls:\n  <<: *h\n"))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "uri") {
		t.Fatalf("merged foreign field accepted: %v", err)
	}
}

func TestValidateAcceptsPlaintextDataKeysOnlyWhenAllowed(t *testing.T) {
	e := newEnv(t)
	cfg := e.valid(t)
	cfg.Grants[0].RecipientKeys = nil
	if err := cfg.Validate(); err == nil {
		t.Fatal("datakey grant with no recipient and no plaintext accepted")
	}
	cfg.Grants[0].AllowPlaintext = true
	if err := cfg.Validate(); err != nil {
		t.Fatalf("allow_plaintext grant refused: %v", err)
	}
}

func TestGovernanceSectionIsValidatedWithFieldPaths(t *testing.T) {
	e := newEnv(t)
	_, err := Load(e.write(t, fmt.Sprintf(`tls: {cert_file: %s, key_file: %s, client_ca_file: %s}
hsm: {uri: "pkcs11:token=custody?module-path=/usr/lib/softhsm/libsofthsm2.so", pin_file: %s}
store: {path: %s}
audit: {dir: %s}
governance: {time_lock: 1m, proposal_ttl: 30s, freeze: {refusals: 20000}}
`, e.cert, e.key, e.ca, e.pin, e.store, e.audit)))
	if err == nil {
		t.Fatal("a 1m time-lock outside dev, a ttl below it and 20000 refusals were accepted")
	}
	for _, want := range []string{"governance.time_lock:", "governance.proposal_ttl:", "governance.freeze.refusals:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

// The config file and the key model apply one key-name rule: a name one
// accepts, the other accepts (a leading underscore included).
func TestConfigAndKeyModelAgreeOnKeyNames(t *testing.T) {
	e := newEnv(t)
	for _, name := range []string{"_private", "a", "A.b-c_9", "-x", ".x", "a b", "k*"} {
		c := e.valid(t)
		c.Grants[0].Keys = []string{name}
		cfgErr := c.Validate()
		modelErr := keys.ValidateName(name)
		if (cfgErr == nil) != (modelErr == nil) {
			t.Errorf("key name %q: config says %v, key model says %v", name, cfgErr, modelErr)
		}
	}
}
