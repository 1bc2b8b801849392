package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"

	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
)

// trustConfig is the part of a custodyd configuration file that declares
// trust (internal/config's fields of the same names; other fields are
// ignored here, custodyd checks them).
type trustConfig struct {
	Dev bool `yaml:"dev"`
	TLS struct {
		ClientCAFile string `yaml:"client_ca_file"`
	} `yaml:"tls"`
	Identities []struct {
		Name       string `yaml:"name"`
		Role       string `yaml:"role"`
		SPKISHA256 string `yaml:"spki_sha256"`
		URI        string `yaml:"uri"`
	} `yaml:"identities"`
	Governance struct {
		TimeLock    time.Duration `yaml:"time_lock"`
		ProposalTTL time.Duration `yaml:"proposal_ttl"`
		Freeze      struct {
			Refusals int           `yaml:"refusals"`
			Within   time.Duration `yaml:"within"`
		} `yaml:"freeze"`
		QuorumRequired bool `yaml:"quorum_required"`
	} `yaml:"governance"`
}

// custodyd's defaults for the trust fields (internal/config).
const (
	defaultTimeLock       = 24 * time.Hour
	defaultProposalTTL    = 720 * time.Hour
	defaultFreezeRefusals = 100
	defaultFreezeWithin   = time.Minute
)

// trustFromConfig is the trust a custodyd configuration file declares, as
// custodyd computes it (internal/config's Config.Trust; a test keeps the
// two equal): what a set-trust proposal makes the vault's, so that the
// file, once installed, agrees with it. Only the file and its
// tls.client_ca_file are read.
func trustFromConfig(path string) (quorum.CeremonyTrust, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return quorum.CeremonyTrust{}, localError(codes.FailedPrecondition, fmt.Errorf("--from-config: %w", err))
	}
	var c trustConfig
	if err := yaml.Unmarshal(raw, &c); err != nil {
		return quorum.CeremonyTrust{}, localError(codes.InvalidArgument, fmt.Errorf("--from-config %s: %v", path, err))
	}
	g := c.Governance
	if g.TimeLock == 0 {
		g.TimeLock = defaultTimeLock
	}
	if g.ProposalTTL == 0 {
		g.ProposalTTL = defaultProposalTTL
	}
	if g.Freeze.Refusals == 0 {
		g.Freeze.Refusals = defaultFreezeRefusals
	}
	if g.Freeze.Within == 0 {
		g.Freeze.Within = defaultFreezeWithin
	}
	cas, err := caFingerprints(c.TLS.ClientCAFile)
	if err != nil {
		return quorum.CeremonyTrust{}, localError(codes.InvalidArgument, fmt.Errorf("--from-config %s: tls.client_ca_file: %w", path, err))
	}
	t := quorum.CeremonyTrust{Production: !c.Dev, Trust: quorum.Trust{ClientCAs: cas, Roles: map[string]policy.Role{},
		TimeLock: g.TimeLock, ProposalTTL: g.ProposalTTL,
		Freeze:         policy.FreezeRule{Refusals: g.Freeze.Refusals, Within: g.Freeze.Within},
		QuorumRequired: g.QuorumRequired || !c.Dev}}
	for i, id := range c.Identities {
		switch {
		case id.URI != "" && id.SPKISHA256 == "":
			t.Roles[id.URI] = policy.Role(id.Role)
		case id.SPKISHA256 != "" && id.URI == "":
			t.Roles["spki:"+strings.ToLower(id.SPKISHA256)] = policy.Role(id.Role)
		default:
			return quorum.CeremonyTrust{}, localError(codes.InvalidArgument, fmt.Errorf("--from-config %s: identities[%d]: exactly one of uri and spki_sha256", path, i))
		}
	}
	if err := t.Trust.Validate(); err != nil {
		return quorum.CeremonyTrust{}, localError(codes.InvalidArgument, fmt.Errorf("--from-config %s: %w", path, err))
	}
	return t, nil
}

// caFingerprints is the sorted SHA-256 of every certificate in a PEM file.
func caFingerprints(path string) ([]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for {
		var blk *pem.Block
		blk, raw = pem.Decode(raw)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(blk.Bytes)
		out = append(out, hex.EncodeToString(sum[:]))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no certificate")
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// summarizeTrust says everything a set-trust installs, for the officers
// who approve it.
func summarizeTrust(t quorum.Trust) string {
	var b strings.Builder
	fmt.Fprintf(&b, "make the vault's trust (replacing what the ceremony and earlier set-trust proposals fixed): time-lock %s, proposal ttl %s, freeze after %d refusals within %s, quorum required %t; client CAs (SHA-256 of the certificate) %s; identities ",
		t.TimeLock, t.ProposalTTL, t.Freeze.Refusals, t.Freeze.Within, t.QuorumRequired, strings.Join(t.ClientCAs, ","))
	ids := make([]string, 0, len(t.Roles))
	for id := range t.Roles {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for i, id := range ids {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s=%s", id, t.Roles[id])
	}
	return b.String()
}

// spkiPin reads a grant's key pin: 64 hex digits, or a PEM certificate or
// public key file (resolve maps a relative path).
func spkiPin(v string, resolve func(string) string) (string, error) {
	s := strings.TrimPrefix(strings.ToLower(v), "spki:")
	if b, err := hex.DecodeString(s); err == nil && len(b) == sha256.Size {
		return s, nil
	}
	raw, err := os.ReadFile(resolve(v))
	if err != nil {
		return "", fmt.Errorf("%q is neither 64 hex digits nor a readable PEM file", v)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil {
		return "", fmt.Errorf("%s: no PEM block", v)
	}
	var spki []byte
	switch blk.Type {
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return "", fmt.Errorf("%s: %v", v, err)
		}
		spki = c.RawSubjectPublicKeyInfo
	case pemPublicKey:
		if _, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
			return "", fmt.Errorf("%s: %v", v, err)
		}
		spki = blk.Bytes
	default:
		return "", fmt.Errorf("%s: a %q block is neither a certificate nor a public key", v, blk.Type)
	}
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:]), nil
}
