package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/custodyhq/custody/internal/names"
	"github.com/custodyhq/custody/internal/pkcs11uri"
)

// Problem is one validation failure: the dotted field path it is about
// ("hsm.pin_file", "grants[2].operations[0]") and what is wrong.
type Problem struct {
	Path    string
	Message string
}

func (p Problem) String() string { return p.Path + ": " + p.Message }

// ValidationError lists every problem found in a configuration. It wraps
// ErrInvalid.
type ValidationError struct {
	Problems []Problem
}

// Error renders all problems on one line, so a bad config stops start-up
// with one clear line.
func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	n := "1 problem"
	if len(parts) != 1 {
		n = strconv.Itoa(len(parts)) + " problems"
	}
	return ErrInvalid.Error() + " (" + n + "): " + strings.Join(parts, "; ")
}

// Unwrap returns ErrInvalid.
func (e *ValidationError) Unwrap() error { return ErrInvalid }

// Limits enforced by Validate.
const (
	maxSessionsLimit      = 1024
	minCheckpointInterval = time.Second
	maxCheckpointInterval = 24 * time.Hour
	minSegmentBytes       = 1 << 20
	maxSegmentBytes       = 1 << 30
	minDestroyWaitProd    = 24 * time.Hour
	maxPayloadLimit       = 1 << 20
	maxBatchLimit         = 1000
	spkiPrefix            = "spki:"
)

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	envRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	hex64RE  = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
	pinURIRE = regexp.MustCompile(`(?i)pin-(value|source)=`)
)

type problems []Problem

func (ps *problems) add(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// Validate checks the whole configuration and returns a *ValidationError
// listing every problem, or nil. Call ApplyDefaults first: a zero value is
// reported as out of range. Validate inspects the files and directories the
// configuration names (existence, type, permissions) and whether the PIN
// environment variable is set, but it never reads the PIN.
func (c *Config) Validate() error {
	var ps problems
	checkAddr(&ps, "listen", c.Listen)
	checkAddr(&ps, "http_listen", c.HTTPListen)
	if c.Listen != "" && c.Listen == c.HTTPListen && !strings.HasSuffix(c.Listen, ":0") {
		ps.add("http_listen", "must differ from listen (%s)", c.Listen)
	}
	if c.GatewayListen != "" {
		checkAddr(&ps, "gateway_listen", c.GatewayListen)
		if !strings.HasSuffix(c.GatewayListen, ":0") && (c.GatewayListen == c.Listen || c.GatewayListen == c.HTTPListen) {
			ps.add("gateway_listen", "must differ from listen and http_listen (%s)", c.GatewayListen)
		}
	}
	c.TLS.validate(&ps)
	c.HSM.validate(&ps, c.Dev)
	c.Seal.validate(&ps)
	c.Store.validate(&ps)
	c.Audit.validate(&ps)
	c.Keys.validate(&ps, c.Dev)
	byName := validateIdentities(&ps, c.Identities)
	validateGrants(&ps, c.Grants, byName)
	validateBudgets(&ps, c.Budgets, byName)
	c.Governance.validate(&ps, c.Dev)
	c.Limits.validate(&ps)
	validateReplicaID(&ps, c.ReplicaID)
	if len(ps) == 0 {
		return nil
	}
	return &ValidationError{Problems: ps}
}

func checkAddr(ps *problems, path, addr string) {
	if addr == "" {
		ps.add(path, "is required (host:port)")
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		ps.add(path, "%q is not host:port", addr)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		ps.add(path, "port %q is not a number from 0 to 65535", port)
	}
	if host != "" && net.ParseIP(host) == nil && !validHostname(host) {
		ps.add(path, "host %q is neither an IP address nor a host name", host)
	}
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

func (t TLSConfig) validate(ps *problems) {
	checkFile(ps, "tls.cert_file", t.CertFile)
	if checkFile(ps, "tls.key_file", t.KeyFile) {
		// Group access is tolerated (Kubernetes fsGroup mounts keys 0440);
		// a world-readable key is not.
		if st, err := os.Stat(t.KeyFile); err == nil && st.Mode().Perm()&0o007 != 0 {
			ps.add("tls.key_file", "file is accessible by others (mode %#o); chmod 600 it", st.Mode().Perm())
		}
	}
	checkFile(ps, "tls.client_ca_file", t.ClientCAFile)
}

// checkFile reports whether path names an existing regular file, adding a
// problem if not. It may echo the path: it is not used for secrets' paths.
func checkFile(ps *problems, field, path string) bool {
	if path == "" {
		ps.add(field, "is required")
		return false
	}
	if !filepath.IsAbs(path) {
		ps.add(field, "%q must be an absolute path", path)
		return false
	}
	st, err := os.Stat(path)
	if err != nil {
		ps.add(field, "%s", statMessage(err))
		return false
	}
	if !st.Mode().IsRegular() {
		ps.add(field, "%q is not a regular file", path)
		return false
	}
	return true
}

// statMessage describes a stat failure without the path (PathError embeds it).
func statMessage(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "file does not exist"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	default:
		return "cannot stat file"
	}
}

// validate checks the HSM section. It never echoes pin_file or pin_env:
// an operator who pastes the PIN into one of them must not see it in logs.
func (h HSMConfig) validate(ps *problems, dev bool) {
	switch {
	case h.URI == "":
		ps.add("hsm.uri", `is required (an RFC 7512 "pkcs11:" URI)`)
	case !strings.HasPrefix(h.URI, "pkcs11:"):
		ps.add("hsm.uri", `must start with "pkcs11:" (RFC 7512)`)
	case pinURIRE.MatchString(h.URI):
		ps.add("hsm.uri", "must not carry pin-value or pin-source; use hsm.pin_file or hsm.pin_env")
	default:
		// The one parser custodyd and custodyctl use (never echoes a PIN:
		// those were refused above).
		if _, err := pkcs11uri.Parse(h.URI); err != nil {
			ps.add("hsm.uri", "%v", err)
		}
	}
	switch {
	case h.PINFile == "" && h.PINEnv == "":
		if dev {
			ps.add("hsm", "a dev instance needs one of pin_file and pin_env (a production one without either starts sealed)")
		}
	case h.PINFile != "" && h.PINEnv != "":
		ps.add("hsm", "pin_file and pin_env are mutually exclusive; set exactly one")
	case h.PINFile != "":
		if !filepath.IsAbs(h.PINFile) {
			ps.add("hsm.pin_file", "must be an absolute path")
			break
		}
		st, err := os.Stat(h.PINFile)
		if err != nil {
			ps.add("hsm.pin_file", "%s", statMessage(err))
			break
		}
		if msg := pinFileModeProblem(st.Mode()); msg != "" {
			ps.add("hsm.pin_file", "%s", msg)
		}
	case h.PINEnv != "":
		if !envRE.MatchString(h.PINEnv) {
			ps.add("hsm.pin_env", "is not a valid environment variable name")
		} else if v, ok := os.LookupEnv(h.PINEnv); !ok || v == "" {
			ps.add("hsm.pin_env", "the named environment variable is not set or is empty")
		}
	}
	if h.MaxSessions < 1 || h.MaxSessions > maxSessionsLimit {
		ps.add("hsm.max_sessions", "%d is out of range 1..%d", h.MaxSessions, maxSessionsLimit)
	}
	if h.Profile != "" && !slices.Contains(HSMProfiles, h.Profile) {
		ps.add("hsm.profile", "%q is not one of %s", h.Profile, strings.Join(HSMProfiles, ", "))
	}
	switch {
	case len(h.InitArgs) > maxInitArgs:
		ps.add("hsm.init_args", "is %d bytes; at most %d", len(h.InitArgs), maxInitArgs)
	case strings.ContainsRune(h.InitArgs, 0):
		ps.add("hsm.init_args", "must not contain a NUL byte")
	}
	if _, err := h.Mechanisms(); err != nil {
		ps.add("hsm.deny_mechanisms", "%v", err)
	}
	if h.RecycleAfterSessionObjects < -1 {
		ps.add("hsm.recycle_after_session_objects", "%d is out of range: -1 (never), 0 (the module's default) or a positive count", h.RecycleAfterSessionObjects)
	}
}

// maxInitArgs bounds hsm.init_args (a configuration string, not a file).
const maxInitArgs = 4096

func (s SealConfig) validate(ps *problems) {
	if s.UnsealTimeout < time.Minute || s.UnsealTimeout > 24*time.Hour {
		ps.add("seal.unseal_timeout", "%s is out of range 1m..24h", s.UnsealTimeout)
	}
	if s.LeaseTTL < 3*time.Second || s.LeaseTTL > 10*time.Minute {
		ps.add("seal.lease_ttl", "%s is out of range 3s..10m", s.LeaseTTL)
	}
}

// pinFileModeProblem returns why a PIN file with mode m is refused, or "".
func pinFileModeProblem(m fs.FileMode) string {
	if !m.IsRegular() {
		return "is not a regular file"
	}
	perm := m.Perm()
	switch {
	case perm&0o044 != 0:
		return fmt.Sprintf("file is readable by group or others (mode %#o); chmod 600 it", perm)
	case perm&0o077 != 0:
		return fmt.Sprintf("file is accessible by group or others (mode %#o); chmod 600 it", perm)
	}
	return ""
}

func checkStorePath(ps *problems, field, path string) {
	if path == "" {
		ps.add(field, "is required")
		return
	}
	if !filepath.IsAbs(path) {
		ps.add(field, "%q must be an absolute path", path)
		return
	}
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		ps.add(field, "%q exists and is not a regular file", path)
		return
	}
	checkDir(ps, field, filepath.Dir(path), "parent directory ")
}

func checkDir(ps *problems, field, dir, what string) {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		ps.add(field, "%s%q does not exist", what, dir)
	case err != nil:
		ps.add(field, "%s%q: %s", what, dir, statMessage(err))
	case !st.IsDir():
		ps.add(field, "%s%q is not a directory", what, dir)
	}
}

func (a AuditConfig) validate(ps *problems) {
	switch {
	case a.Dir == "":
		ps.add("audit.dir", "is required")
	case !filepath.IsAbs(a.Dir):
		ps.add("audit.dir", "%q must be an absolute path", a.Dir)
	default:
		checkDir(ps, "audit.dir", a.Dir, "")
	}
	if a.CheckpointEvery < 1 {
		ps.add("audit.checkpoint_every", "%d must be at least 1", a.CheckpointEvery)
	}
	if a.CheckpointInterval < minCheckpointInterval || a.CheckpointInterval > maxCheckpointInterval {
		ps.add("audit.checkpoint_interval", "%s is out of range %s..%s", a.CheckpointInterval, minCheckpointInterval, maxCheckpointInterval)
	}
	if a.SegmentBytes < minSegmentBytes || a.SegmentBytes > maxSegmentBytes {
		ps.add("audit.segment_bytes", "%d is out of range %d..%d", a.SegmentBytes, minSegmentBytes, maxSegmentBytes)
	}
	switch {
	case a.AnchorFile != "" && a.AnchorURL != "":
		ps.add("audit.anchor_url", "give anchor_file or anchor_url, not both")
	case a.AnchorFile != "" && !filepath.IsAbs(a.AnchorFile):
		ps.add("audit.anchor_file", "%q must be an absolute path", a.AnchorFile)
	case a.AnchorURL != "":
		if u, err := url.Parse(a.AnchorURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			ps.add("audit.anchor_url", "%q must be an http(s) URL", a.AnchorURL)
		}
	}
}

func (k KeysConfig) validate(ps *problems, dev bool) {
	switch {
	case k.DestroyWaitMin <= 0:
		ps.add("keys.destroy_wait_min", "%s must be positive", k.DestroyWaitMin)
	case k.DestroyWaitMin < minDestroyWaitProd && !dev:
		ps.add("keys.destroy_wait_min", "%s is below %s; only a dev instance may set less", k.DestroyWaitMin, minDestroyWaitProd)
	}
	if k.DestroyWaitDefault < k.DestroyWaitMin {
		ps.add("keys.destroy_wait_default", "%s is below keys.destroy_wait_min (%s)", k.DestroyWaitDefault, k.DestroyWaitMin)
	}
	if k.MaxPayloadBytes < 1 || k.MaxPayloadBytes > maxPayloadLimit {
		ps.add("keys.max_payload_bytes", "%d is out of range 1..%d", k.MaxPayloadBytes, maxPayloadLimit)
	}
	if k.MaxBatch < 1 || k.MaxBatch > maxBatchLimit {
		ps.add("keys.max_batch", "%d is out of range 1..%d", k.MaxBatch, maxBatchLimit)
	}
}

// minTimeLockProd is the shortest time-lock outside development: long
// enough for officers to notice a widening proposal and veto it.
const minTimeLockProd = time.Hour

func (g GovernanceConfig) validate(ps *problems, dev bool) {
	switch {
	case g.TimeLock <= 0:
		ps.add("governance.time_lock", "%s must be positive", g.TimeLock)
	case g.TimeLock < minTimeLockProd && !dev:
		ps.add("governance.time_lock", "%s is below %s; only a dev instance may set less", g.TimeLock, minTimeLockProd)
	}
	if g.ProposalTTL <= g.TimeLock {
		ps.add("governance.proposal_ttl", "%s must exceed governance.time_lock (%s), or no widening proposal could execute", g.ProposalTTL, g.TimeLock)
	}
	if g.Freeze.Refusals < 1 || g.Freeze.Refusals > 10000 {
		ps.add("governance.freeze.refusals", "%d is out of range 1..10000", g.Freeze.Refusals)
	}
	if g.Freeze.Within <= 0 {
		ps.add("governance.freeze.within", "%s must be positive", g.Freeze.Within)
	}
}

// validateIdentities checks identities and returns them by name.
func validateIdentities(ps *problems, ids []IdentityConfig) map[string]IdentityConfig {
	byName := map[string]IdentityConfig{}
	byID := map[string]string{}
	for i, id := range ids {
		p := "identities[" + strconv.Itoa(i) + "]"
		switch {
		case id.Name == "":
			ps.add(p+".name", "is required")
		case !nameRE.MatchString(id.Name):
			ps.add(p+".name", "%q must match %s", id.Name, nameRE)
		default:
			if _, dup := byName[id.Name]; dup {
				ps.add(p+".name", "%q is defined more than once", id.Name)
			} else {
				byName[id.Name] = id
			}
		}
		if id.Role == "" {
			ps.add(p+".role", "is required (one of %s)", roleList())
		} else if !id.Role.Valid() {
			ps.add(p+".role", "%q is not one of %s", id.Role, roleList())
		}
		ok := true
		switch {
		case id.SPKISHA256 == "" && id.URI == "":
			ps.add(p, "one of spki_sha256 and uri is required")
			ok = false
		case id.SPKISHA256 != "" && id.URI != "":
			ps.add(p, "spki_sha256 and uri are mutually exclusive; set exactly one")
			ok = false
		case id.SPKISHA256 != "":
			if !hex64RE.MatchString(id.SPKISHA256) {
				ps.add(p+".spki_sha256", "must be 64 hex digits (SHA-256 of the certificate's SubjectPublicKeyInfo)")
				ok = false
			}
		default:
			if msg := spiffeProblem(id.URI); msg != "" {
				ps.add(p+".uri", "%s", msg)
				ok = false
			}
		}
		if ok {
			if other, dup := byID[id.ID()]; dup {
				ps.add(p, "same certificate identity as %q; one identity has one role", other)
			} else {
				byID[id.ID()] = id.Name
			}
		}
	}
	return byName
}

// spiffeProblem returns why u is not an acceptable SPIFFE ID, or "".
// Identities compare as exact strings, so only the canonical form is accepted.
func spiffeProblem(u string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return "is not a valid URI"
	}
	switch {
	case parsed.Scheme != "spiffe":
		return `must be a SPIFFE ID ("spiffe://trust-domain/path")`
	case parsed.Host == "" || parsed.Host != strings.ToLower(parsed.Host):
		return "must have a lower-case trust domain"
	case parsed.User != nil || parsed.Port() != "":
		return "must not have user info or a port"
	case parsed.Path == "" || parsed.Path == "/" || strings.HasSuffix(parsed.Path, "/"):
		return "must have a path that does not end in /"
	case parsed.RawQuery != "" || parsed.Fragment != "" || strings.ContainsAny(u, "?#"):
		return "must not have a query or fragment"
	case parsed.String() != u:
		return "is not in canonical form"
	}
	return ""
}

func validateGrants(ps *problems, grants []GrantConfig, byName map[string]IdentityConfig) {
	for i, g := range grants {
		p := "grants[" + strconv.Itoa(i) + "]"
		if g.Identity == "" {
			ps.add(p+".identity", "is required")
		} else if id, ok := byName[g.Identity]; !ok {
			ps.add(p+".identity", "%q is not defined in identities", g.Identity)
		} else if id.Role.Valid() && id.Role != RoleRelay { // an invalid role is reported once, above
			ps.add(p+".identity", "%q has role %q; grants are for relay identities only", g.Identity, id.Role)
		}
		if len(g.Keys) == 0 {
			ps.add(p+".keys", "at least one key is required")
		}
		seenKey := map[string]bool{}
		for j, k := range g.Keys {
			kp := p + ".keys[" + strconv.Itoa(j) + "]"
			switch {
			case names.KeyName(k) != nil:
				ps.add(kp, "%s", names.KeyName(k))
			case seenKey[k]:
				ps.add(kp, "%q is listed more than once", k)
			}
			seenKey[k] = true
		}
		if len(g.Operations) == 0 {
			ps.add(p+".operations", "at least one operation is required")
		}
		seenOp := map[Operation]bool{}
		for j, op := range g.Operations {
			op2 := p + ".operations[" + strconv.Itoa(j) + "]"
			switch {
			case !op.Valid():
				ps.add(op2, "%q is not one of %s", op, opList())
			case seenOp[op]:
				ps.add(op2, "%q is listed more than once", op)
			}
			seenOp[op] = true
		}
		for k := range g.ContextMatch {
			if k == "" {
				ps.add(p+".context_match", "keys must not be empty")
			}
		}
		seenRcpt := map[string]bool{}
		for j, r := range g.RecipientKeys {
			rp := p + ".recipient_keys[" + strconv.Itoa(j) + "]"
			switch {
			case !hex64RE.MatchString(r):
				ps.add(rp, "must be 64 hex digits (SHA-256 of the recipient's SubjectPublicKeyInfo)")
			case seenRcpt[strings.ToLower(r)]:
				ps.add(rp, "is listed more than once")
			}
			seenRcpt[strings.ToLower(r)] = true
		}
		// The policy returns a data key only wrapped to a listed recipient,
		// or in plaintext when allowed: with neither, these ops always fail.
		if (seenOp[OpDataKey] || seenOp[OpUnwrap]) && len(g.RecipientKeys) == 0 && !g.AllowPlaintext {
			ps.add(p, "datakey and unwrap need recipient_keys or allow_plaintext: true")
		}
	}
}

func roleList() string {
	s := make([]string, len(Roles))
	for i, r := range Roles {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

func opList() string {
	s := make([]string, len(Operations))
	for i, o := range Operations {
		s[i] = string(o)
	}
	return strings.Join(s, ", ")
}

func toLowerHex(s string) string { return strings.ToLower(s) }

// redactURI hides the value of any pin-value or pin-source attribute.
func redactURI(u string) string {
	return redactRE.ReplaceAllString(u, "${1}REDACTED")
}

var redactRE = regexp.MustCompile(`(?i)(pin-(?:value|source)=)[^;?&]*`)

// validateBudgets checks each budget.
func validateBudgets(ps *problems, budgets []BudgetConfig, byName map[string]IdentityConfig) {
	have := map[[2]string]bool{}
	for i, b := range budgets {
		p := "budgets[" + strconv.Itoa(i) + "]"
		if id, ok := byName[b.Identity]; !ok {
			ps.add(p+".identity", "%q is not defined in identities", b.Identity)
		} else if id.Role.Valid() && id.Role != RoleRelay { // an invalid role is reported once, above
			ps.add(p+".identity", "%q has role %q; budgets are for relay identities", b.Identity, id.Role)
		}
		if err := names.KeyName(b.Key); err != nil {
			ps.add(p+".key", "%s", err)
		}
		if !(b.Rate > 0) {
			ps.add(p+".rate", "must be positive (operations per second)")
		}
		if b.Burst < 1 {
			ps.add(p+".burst", "must be at least 1")
		}
		if b.Volume < 1 {
			ps.add(p+".volume", "must be at least 1 (operations per window)")
		}
		if b.Window <= 0 {
			ps.add(p+".window", "must be a positive duration such as 24h")
		}
		k := [2]string{b.Identity, b.Key}
		if have[k] {
			ps.add(p, "a second budget for %q on %q", b.Identity, b.Key)
		}
		have[k] = true
	}
}
