// Package config loads and validates custodyd's configuration file.
//
// The file is strict YAML: unknown fields, duplicate keys, wrong types and
// extra documents are errors, so a typo can never silently fall back to a
// default. Load reads, decodes, applies defaults (ApplyDefaults) and validates
// (Validate) in that order; custodyd refuses to start unless Load succeeds.
//
// Invariants:
//
//   - Every problem is reported, not just the first, and each one names the
//     field path it is about (for example "hsm.pin_file: file is readable by
//     group or others (mode 0644); chmod 600 it"). Problems are returned as one
//     *ValidationError, which wraps ErrInvalid.
//   - The HSM PIN is never held in Config. It is read on demand by
//     HSMConfig.ReadPIN from a file or an environment variable, and it never
//     appears in an error, in a String/GoString method or in %v output. Error
//     messages about pin_file and pin_env never echo their values either,
//     because a PIN pasted into the wrong field must not leak through them.
package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"
)

// Sentinel errors. Errors returned by this package wrap one of them.
var (
	// ErrInvalid: the configuration is malformed or fails validation.
	ErrInvalid = errors.New("config: invalid configuration")
	// ErrPIN: the HSM PIN could not be obtained from its configured source.
	ErrPIN = errors.New("config: cannot read hsm pin")
)

// maxConfigBytes bounds the configuration file; a real one is a few KiB.
const maxConfigBytes = 1 << 20

// Defaults applied by ApplyDefaults to fields left at their zero value.
const (
	DefaultListen             = "127.0.0.1:8443"
	DefaultHTTPListen         = "127.0.0.1:9090"
	DefaultMaxSessions        = 16
	DefaultStorePath          = "/var/lib/custody/custody.db"
	DefaultAuditDir           = "/var/lib/custody/audit"
	DefaultCheckpointEvery    = 1000
	DefaultCheckpointInterval = time.Second
	DefaultSegmentBytes       = 64 << 20
	DefaultDestroyWait        = 168 * time.Hour
	DefaultDestroyWaitMin     = 24 * time.Hour
	DefaultMaxPayloadBytes    = 65536
	DefaultMaxBatch           = 100
	DefaultTimeLock           = 24 * time.Hour
	DefaultProposalTTL        = 720 * time.Hour
	DefaultFreezeRefusals     = 100
	DefaultFreezeWithin       = time.Minute
	DefaultUnsealTimeout      = 15 * time.Minute
	DefaultLeaseTTL           = 30 * time.Second
)

// Config is custodyd's configuration. Durations are written in Go syntax
// ("60s", "168h"); a bare number is rejected rather than read as nanoseconds.
type Config struct {
	// Dev marks a development instance (custodyd --dev). It only relaxes the
	// floor on keys.destroy_wait_min; it must never be set in production.
	Dev bool `yaml:"dev"`
	// Listen is the gRPC listen address (host:port). gRPC is mTLS only.
	Listen string `yaml:"listen"`
	// HTTPListen is the address serving /metrics, /healthz and /readyz.
	HTTPListen string `yaml:"http_listen"`
	// GatewayListen, if set, is the address of the REST/JSON gateway
	// (HTTPS, same TLS certificate and client CA as the gRPC listener,
	// client certificates required). Empty (the default) serves no gateway.
	GatewayListen string `yaml:"gateway_listen"`
	// TLS holds the server certificate and the CA that issues client certificates.
	TLS TLSConfig `yaml:"tls"`
	// HSM says which PKCS#11 token holds the keys and where its PIN comes from.
	HSM HSMConfig `yaml:"hsm"`
	// Store is the metadata store (bbolt file).
	Store StoreConfig `yaml:"store"`
	// Audit configures the hash-chained audit log.
	Audit AuditConfig `yaml:"audit"`
	// Keys holds limits that apply to every key.
	Keys KeysConfig `yaml:"keys"`
	// Identities maps client certificate identities to names and roles.
	Identities []IdentityConfig `yaml:"identities"`
	// Grants give relay identities operations on named keys. They apply
	// only before the key ceremony and when governance.quorum_required is
	// false; afterwards grants live in the governance state.
	Grants []GrantConfig `yaml:"grants"`
	// Governance configures quorum governance (proposals, time-locks,
	// budget freezes).
	Governance GovernanceConfig `yaml:"governance"`
	// Seal configures sealed start (hsm.pin_file and hsm.pin_env unset).
	Seal SealConfig `yaml:"seal"`
	// Budgets bound what each relay may do on each granted key in dev mode,
	// where Grants apply too. Outside dev mode the vault is governed from its
	// first start: grants and budgets come only from the key ceremony and
	// quorum proposals, and these two sections are ignored (with a warning).
	Budgets []BudgetConfig `yaml:"budgets"`
	// Limits bound connections, handshakes, requests in flight and memory
	// (limits.go).
	Limits LimitsConfig `yaml:"limits"`
	// ReplicaID names this custodyd among the replicas of one vault (the
	// host name by default): it is in every audit record and checkpoint of
	// this replica's chain and in the election of the replica that runs
	// scheduled work (replica.go).
	ReplicaID string `yaml:"replica_id"`
}

// BudgetConfig is a token bucket (rate per second, burst) plus a volume cap
// per window for one relay identity on one key.
type BudgetConfig struct {
	Identity string        `yaml:"identity"`
	Key      string        `yaml:"key"`
	Rate     float64       `yaml:"rate"`
	Burst    int           `yaml:"burst"`
	Volume   int64         `yaml:"volume"`
	Window   time.Duration `yaml:"window"`
}

// SealConfig configures sealed start: a production custodyd with neither
// hsm.pin_file nor hsm.pin_env starts sealed and waits for M officers'
// shares of the PIN (docs/operations.md, "Unsealing").
type SealConfig struct {
	// UnsealTimeout is how long accepted shares wait for the rest before
	// they are discarded (default 15m, 1m..24h).
	UnsealTimeout time.Duration `yaml:"unseal_timeout"`
	// LeaseTTL is how long this custodyd's lease on the HSM token lasts
	// without renewal (default 30s, 3s..10m). A second custodyd on the
	// same token is refused while the lease is live; after a crash, a
	// restart on another host waits this long (on the same host it does
	// not wait).
	LeaseTTL time.Duration `yaml:"lease_ttl"`
}

// GovernanceConfig configures quorum governance.
type GovernanceConfig struct {
	// TimeLock is how long a widening proposal waits, once approved, for a
	// veto (default 24h; at least 1h unless dev).
	TimeLock time.Duration `yaml:"time_lock"`
	// ProposalTTL is the longest a proposal may live from creation to
	// expiry (default 720h).
	ProposalTTL time.Duration `yaml:"proposal_ttl"`
	// Freeze defines a sustained budget breach that freezes an identity on
	// a key until an unfreeze proposal executes.
	Freeze FreezeConfig `yaml:"freeze"`
	// QuorumRequired refuses direct key and grant changes even before the
	// ceremony has run; config grants are then never used.
	QuorumRequired bool `yaml:"quorum_required"`
}

// FreezeConfig is a sustained-breach rule: Refusals budget refusals of one
// identity on one key within Within freeze it.
type FreezeConfig struct {
	Refusals int           `yaml:"refusals"`
	Within   time.Duration `yaml:"within"`
}

// TLSConfig names PEM files for the gRPC listener.
type TLSConfig struct {
	// CertFile is the server certificate chain (PEM).
	CertFile string `yaml:"cert_file"`
	// KeyFile is the server private key (PEM); it must not be world-readable.
	KeyFile string `yaml:"key_file"`
	// ClientCAFile holds the CA certificates that client certificates must chain to.
	ClientCAFile string `yaml:"client_ca_file"`
}

// HSMConfig says which token to use and where its user PIN comes from. It
// never holds the PIN itself; see ReadPIN.
type HSMConfig struct {
	// URI is an RFC 7512 PKCS#11 URI ("pkcs11:token=...;module-path=...").
	// Only its prefix is checked here; package hsm parses it. It must not
	// carry a pin-value attribute.
	URI string `yaml:"uri"`
	// PINFile is a regular file, readable only by its owner, holding the PIN.
	PINFile string `yaml:"pin_file"`
	// PINEnv is the name of an environment variable holding the PIN.
	// At most one of PINFile and PINEnv is set; a dev instance needs one.
	// With neither, a production custodyd starts sealed: the key ceremony
	// replaces the installer's PIN with a random one split among the
	// officers, and every start needs M of them. With either, the PIN is
	// on the host, which root there can read: custodyd says so at start,
	// in its status, its metrics and the ceremony transcript.
	PINEnv string `yaml:"pin_env"`
	// MaxSessions bounds the PKCS#11 session pool.
	MaxSessions int `yaml:"max_sessions"`
	// Profile is the vendor profile (one of HSMProfiles): what custodyd
	// cannot probe safely about the module, such as attributes the vendor
	// refuses or misreports. Empty picks one from the module's manufacturer
	// ID (SoftHSM, NSS), else "generic". See docs/hsm-compatibility.md.
	Profile string `yaml:"profile"`
	// InitArgs, if set, is passed to C_Initialize as pReserved: the
	// configuration string some modules need (NSS softokn's configdir, a
	// connector address). It is not secret; never put a PIN in it.
	InitArgs string `yaml:"init_args"`
	// DenyMechanisms are PKCS#11 mechanism numbers ("0x1087") custodyd must
	// not use even though the token lists them (a firmware with a known
	// defect). Only the features that need them stop.
	DenyMechanisms []string `yaml:"deny_mechanisms"`
	// RecycleAfterSessionObjects re-initialises the PKCS#11 module (drain,
	// C_Finalize, C_Initialize, log in; no request fails) after this many
	// session objects, on modules that never free them. 0 means the
	// module's default (SoftHSM: 20000; others: never); -1 means never.
	RecycleAfterSessionObjects int `yaml:"recycle_after_session_objects"`
}

// HSMProfiles are the vendor profiles hsm.profile accepts (package hsm
// defines them; a daemon test keeps the two lists equal).
var HSMProfiles = []string{"cloudhsm", "generic", "luna", "nshield", "nss", "softhsm", "yubihsm"}

// Mechanisms parses DenyMechanisms.
func (h HSMConfig) Mechanisms() ([]uint, error) {
	out := make([]uint, 0, len(h.DenyMechanisms))
	for _, s := range h.DenyMechanisms {
		n, err := strconv.ParseUint(s, 0, 32)
		if err != nil {
			return nil, fmt.Errorf("%q is not a mechanism number (write it as 0x1087)", s)
		}
		out = append(out, uint(n))
	}
	return out, nil
}

// StoreConfig configures the metadata store: the embedded bbolt file
// (default) or a shared etcd cluster (see store.go).
type StoreConfig struct {
	// Backend is "bbolt" (default) or "etcd".
	Backend StoreBackend `yaml:"backend"`
	// Path is the bbolt database file; its directory must exist. Only for
	// backend bbolt.
	Path string `yaml:"path"`
	// Etcd is the cluster to use with backend etcd.
	Etcd EtcdConfig `yaml:"etcd"`
}

// AuditConfig configures the audit log.
type AuditConfig struct {
	// Dir is the directory holding audit segments; it must exist.
	Dir string `yaml:"dir"`
	// CheckpointEvery writes a signed checkpoint after this many records.
	CheckpointEvery int `yaml:"checkpoint_every"`
	// CheckpointInterval writes a signed checkpoint at least this often.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// SegmentBytes is the size at which an audit segment file is rolled.
	SegmentBytes int64 `yaml:"segment_bytes"`
	// AnchorFile, if set, receives every signed checkpoint as a JSON line
	// (fsynced): keep it on storage the vault's operators cannot rewrite.
	AnchorFile string `yaml:"anchor_file"`
	// AnchorURL, if set, receives every signed checkpoint as an HTTP POST.
	AnchorURL string `yaml:"anchor_url"`
}

// KeysConfig holds limits that apply to every key.
type KeysConfig struct {
	// DestroyWaitDefault is the waiting period before a scheduled destruction
	// when the request does not give one.
	DestroyWaitDefault time.Duration `yaml:"destroy_wait_default"`
	// DestroyWaitMin is the shortest waiting period accepted. It is at least
	// 24h unless Dev is set.
	DestroyWaitMin time.Duration `yaml:"destroy_wait_min"`
	// MaxPayloadBytes bounds one plaintext or ciphertext in a request.
	MaxPayloadBytes int `yaml:"max_payload_bytes"`
	// MaxBatch bounds the number of items in one batch request.
	MaxBatch int `yaml:"max_batch"`
}

// IdentityConfig binds a client identity to a name and a role. Exactly one
// of SPKISHA256 and URI is set.
type IdentityConfig struct {
	// Name is how grants and logs refer to the identity.
	Name string `yaml:"name"`
	// Role is one of relay, operator, officer, auditor.
	Role Role `yaml:"role"`
	// SPKISHA256 is the hex SHA-256 of the client certificate's
	// SubjectPublicKeyInfo (64 hex digits, either case).
	SPKISHA256 string `yaml:"spki_sha256"`
	// URI is the certificate's single URI SAN, e.g. spiffe://example.org/relay-1.
	URI string `yaml:"uri"`
}

// ID returns the identity string that authorisation compares against, in
// the format of pki.Identity: the URI when URI is set, otherwise "spki:"
// followed by the lower-case hex SPKI digest.
func (i IdentityConfig) ID() string {
	if i.URI != "" {
		return i.URI
	}
	return spkiPrefix + toLowerHex(i.SPKISHA256)
}

// GrantConfig allows one identity the listed operations on the listed keys.
// There is no wildcard: every key is named.
type GrantConfig struct {
	// Identity is the Name of an entry in identities; it must have role relay.
	Identity string `yaml:"identity"`
	// Keys are key names.
	Keys []string `yaml:"keys"`
	// Operations are the operations allowed on those keys.
	Operations []Operation `yaml:"operations"`
	// ContextMatch, if set, requires every listed pair to be present and
	// equal in the request's encryption context.
	ContextMatch map[string]string `yaml:"context_match"`
	// RecipientKeys are hex SHA-256 digests (64 hex digits) of the
	// SubjectPublicKeyInfo of public keys a data key may be wrapped to.
	RecipientKeys []string `yaml:"recipient_keys"`
	// AllowPlaintext lets datakey and unwrap return a plaintext data key;
	// without it a data key is only ever returned wrapped to a recipient key.
	AllowPlaintext bool `yaml:"allow_plaintext"`
}

// RecipientKeyDigests returns RecipientKeys decoded to 32-byte digests.
// Call it on a validated Config; an entry that is not 64 hex digits is
// skipped.
func (g GrantConfig) RecipientKeyDigests() [][]byte {
	out := make([][]byte, 0, len(g.RecipientKeys))
	for _, h := range g.RecipientKeys {
		b, err := hex.DecodeString(h)
		if err == nil && len(b) == sha256.Size {
			out = append(out, b)
		}
	}
	return out
}

// String describes the HSM configuration without the PIN file path or
// variable name, which a misconfiguration could have filled with the PIN,
// and with any pin-value attribute of the URI redacted.
func (h HSMConfig) String() string {
	src := "none"
	switch {
	case h.PINFile != "" && h.PINEnv != "":
		src = "file+env"
	case h.PINFile != "":
		src = "file"
	case h.PINEnv != "":
		src = "env"
	}
	profile := h.Profile
	if profile == "" {
		profile = "auto"
	}
	return fmt.Sprintf("{uri:%s pin_source:%s max_sessions:%d profile:%s}", redactURI(h.URI), src, h.MaxSessions, profile)
}

// GoString is String, so that %#v cannot bypass the redaction.
func (h HSMConfig) GoString() string { return "config.HSMConfig" + h.String() }

// Load reads the configuration file at path, decodes it strictly, applies
// defaults and validates it. Any failure is returned as one error wrapping
// ErrInvalid; validation failures are a *ValidationError listing every problem.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrInvalid, path, err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("%w: %s: file is larger than %d bytes", ErrInvalid, path, maxConfigBytes)
	}
	cfg, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Decode parses one YAML document strictly into a Config, without applying
// defaults or validating. Unknown fields (all of them, each with its path),
// duplicate keys, wrong types, an empty input and extra documents are errors
// wrapping ErrInvalid. Error messages never quote field values.
func Decode(data []byte) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, sanitizeYAMLError(err, nil))
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, fmt.Errorf("%w: empty configuration", ErrInvalid)
	}
	w := &nodeWalker{lines: map[int]string{}}
	w.walk(doc.Content[0], configType, "")
	if len(w.problems) > 0 {
		return nil, &ValidationError{Problems: w.problems}
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, sanitizeYAMLError(err, w.lines))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one yaml document; custodyd reads exactly one", ErrInvalid)
	}
	return &cfg, nil
}

// ApplyDefaults fills every field left at its zero value with its default
// (the Default* constants). A field explicitly set to zero therefore gets
// the default too; no field has zero as a meaningful value.
func (c *Config) ApplyDefaults() {
	setString(&c.Listen, DefaultListen)
	setString(&c.HTTPListen, DefaultHTTPListen)
	c.applyReplicaDefault()
	setInt(&c.HSM.MaxSessions, DefaultMaxSessions)
	c.Store.applyDefaults()
	setString(&c.Audit.Dir, DefaultAuditDir)
	setInt(&c.Audit.CheckpointEvery, DefaultCheckpointEvery)
	if c.Audit.CheckpointInterval == 0 {
		c.Audit.CheckpointInterval = DefaultCheckpointInterval
	}
	if c.Audit.SegmentBytes == 0 {
		c.Audit.SegmentBytes = DefaultSegmentBytes
	}
	if c.Keys.DestroyWaitDefault == 0 {
		c.Keys.DestroyWaitDefault = DefaultDestroyWait
	}
	if c.Keys.DestroyWaitMin == 0 {
		c.Keys.DestroyWaitMin = DefaultDestroyWaitMin
	}
	setInt(&c.Keys.MaxPayloadBytes, DefaultMaxPayloadBytes)
	setInt(&c.Keys.MaxBatch, DefaultMaxBatch)
	if c.Governance.TimeLock == 0 {
		c.Governance.TimeLock = DefaultTimeLock
	}
	if c.Governance.ProposalTTL == 0 {
		c.Governance.ProposalTTL = DefaultProposalTTL
	}
	setInt(&c.Governance.Freeze.Refusals, DefaultFreezeRefusals)
	if c.Governance.Freeze.Within == 0 {
		c.Governance.Freeze.Within = DefaultFreezeWithin
	}
	if c.Seal.UnsealTimeout == 0 {
		c.Seal.UnsealTimeout = DefaultUnsealTimeout
	}
	if c.Seal.LeaseTTL == 0 {
		c.Seal.LeaseTTL = DefaultLeaseTTL
	}
	c.Limits.applyDefaults()
}

// Sealed reports whether custodyd starts sealed: no PIN source configured.
func (h HSMConfig) Sealed() bool { return h.PINFile == "" && h.PINEnv == "" }

// PINSourceName names the configured PIN source ("pin_file", "pin_env"),
// or "" for a sealed start.
func (h HSMConfig) PINSourceName() string {
	switch {
	case h.PINFile != "":
		return "pin_file"
	case h.PINEnv != "":
		return "pin_env"
	}
	return ""
}

func setString(p *string, def string) {
	if *p == "" {
		*p = def
	}
}

func setInt(p *int, def int) {
	if *p == 0 {
		*p = def
	}
}
