package daemon

import (
	"context"

	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/config"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/pki"
)

// DevRoles are the roles `custodyd --dev` issues client certificates for.
var DevRoles = []string{"relay", "operator", "officer", "auditor"}

// DevKey is the key `custodyd --dev` creates and grants to the dev relay.
const DevKey = "demo"

// The dev vault's signing and MAC keys, granted to the dev relay, so that
// every example of docs/gateway.md runs against `make run`.
const (
	DevSignKey = "demo-sign"
	DevMACKey  = "demo-mac"
)

// devKeys are the keys of a dev vault. demo always exists; the others are
// created at start if the config grants them (internal/testenv's trimmed
// config does not).
var devKeys = []struct {
	name        string
	purpose     keys.Purpose
	description string
	grant       config.GrantConfig
}{
	{DevKey, keys.PurposeEncryptAES256GCM, "dev demo key, granted to the dev relay", config.GrantConfig{
		Identity: "dev-relay", Keys: []string{DevKey}, AllowPlaintext: true,
		Operations: []config.Operation{config.OpEncrypt, config.OpDecrypt, config.OpDataKey, config.OpUnwrap, config.OpRewrap},
	}},
	{DevSignKey, keys.PurposeSignECDSAP256, "dev signing key (ECDSA P-256), granted to the dev relay", config.GrantConfig{
		Identity: "dev-relay", Keys: []string{DevSignKey},
		Operations: []config.Operation{config.OpSign, config.OpVerify, config.OpPublicKey},
	}},
	{DevMACKey, keys.PurposeMACHMACSHA256, "dev MAC key (HMAC-SHA256), granted to the dev relay", config.GrantConfig{
		Identity: "dev-relay", Keys: []string{DevMACKey},
		Operations: []config.Operation{config.OpMAC, config.OpVerifyMAC},
	}},
}

// DevGatewayListen is where `custodyd --dev` serves the REST/JSON gateway
// by default: the port after the gRPC port (8443).
const DevGatewayListen = "127.0.0.1:8444"

// devGatewayListen puts the gateway on the port after the gRPC listener's
// (8443 → 8444), or on an ephemeral port when the gRPC listener is (tests).
func devGatewayListen(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return DevGatewayListen
	}
	n, err := strconv.Atoi(port)
	if err != nil || n == 0 || n >= 65535 {
		return net.JoinHostPort(host, "0")
	}
	return net.JoinHostPort(host, strconv.Itoa(n+1))
}

// softHSMPaths are where Debian and others install SoftHSMv2.
var softHSMPaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// SoftHSMLibrary returns the SoftHSMv2 library path or an error saying how
// to install it.
func SoftHSMLibrary() (string, error) {
	if p := os.Getenv("CUSTODY_SOFTHSM_LIB"); p != "" {
		return p, nil
	}
	for _, p := range softHSMPaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("SoftHSMv2 is not installed: run `make deps` or `apt-get install -y softhsm2`")
}

// DevSetup is what PrepareDev made.
type DevSetup struct {
	Dir        string
	ConfigFile string
	PKI        *pki.DevPKI
}

// PrepareDev makes (or reuses) a development vault in dir: a SoftHSM token
// with random PINs kept in 0600 files, a dev CA with server and per-role
// client certificates, a config with the dev identities and grants to the
// relay of the demo key (encrypt, data keys), demo-sign (ECDSA P-256) and
// demo-mac (HMAC). It sets SOFTHSM2_CONF for this process, so call it
// before the HSM library is loaded. listen and httpListen may use port 0.
func PrepareDev(dir, listen, httpListen string) (*DevSetup, *config.Config, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, nil, err
	}
	dir = abs
	lib, err := SoftHSMLibrary()
	if err != nil {
		return nil, nil, err
	}
	for _, sub := range []string{"", "tokens", "audit"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, nil, err
		}
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\nslots.mechanisms = ALL\nlibrary.reset_on_fork = false\n", filepath.Join(dir, "tokens"))
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, nil, err
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return nil, nil, err
	}
	pinFile := filepath.Join(dir, "pin")
	if _, err := os.Stat(pinFile); errors.Is(err, os.ErrNotExist) {
		pin, so := randomPIN(), randomPIN()
		if err := hsm.InitToken(lib, "custody-dev", []byte(so), []byte(pin)); err != nil {
			return nil, nil, fmt.Errorf("initialise dev token: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "so-pin"), []byte(so+"\n"), 0o600); err != nil {
			return nil, nil, err
		}
		if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
			return nil, nil, err
		}
	}
	pk, err := pki.GenerateDev(filepath.Join(dir, "pki"), DevRoles)
	if err != nil {
		return nil, nil, fmt.Errorf("dev certificates: %w", err)
	}
	cfg := &config.Config{
		Dev:        true,
		Listen:     listen,
		HTTPListen: httpListen,
		TLS:        config.TLSConfig{CertFile: pk.ServerCertFile, KeyFile: pk.ServerKeyFile, ClientCAFile: pk.CAFile},
		HSM:        config.HSMConfig{URI: "pkcs11:token=custody-dev?module-path=" + lib, PINFile: pinFile, Profile: "softhsm"},
		Store:      config.StoreConfig{Path: filepath.Join(dir, "custody.db")},
		Audit:      config.AuditConfig{Dir: filepath.Join(dir, "audit")},
		Keys:       config.KeysConfig{DestroyWaitMin: time.Second},
	}
	// The REST gateway is on in dev, on the port after the gRPC port.
	cfg.GatewayListen = devGatewayListen(listen)
	for _, role := range DevRoles {
		cfg.Identities = append(cfg.Identities, config.IdentityConfig{
			Name: "dev-" + role, Role: config.Role(role), URI: pk.Clients[role].Identity,
		})
	}
	for _, k := range devKeys {
		cfg.Grants = append(cfg.Grants, k.grant)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("dev config: %w", err)
	}
	return &DevSetup{Dir: dir, PKI: pk}, cfg, nil
}

func randomPIN() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// EnsureDevKey creates the demo key, and demo-sign and demo-mac if the
// config grants them, when they are missing.
func (d *Daemon) EnsureDevKey(ctx context.Context, cfg *config.Config) error {
	granted := map[string]bool{}
	for _, g := range cfg.Grants {
		for _, k := range g.Keys {
			granted[k] = true
		}
	}
	for _, k := range devKeys {
		if !granted[k.name] && k.name != DevKey { // demo always exists in a dev vault, as it always has
			continue
		}
		if _, err := d.Keys.Get(k.name); err == nil {
			continue
		}
		if _, err := d.Keys.Create(ctx, k.name, k.purpose, k.description); err != nil {
			return fmt.Errorf("%s: %w", k.name, err)
		}
	}
	return nil
}
