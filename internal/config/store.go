package config

import (
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// StoreBackend names a metadata store implementation.
type StoreBackend string

// Store backends.
const (
	// BackendBbolt is the embedded single-file store: one custodyd.
	BackendBbolt StoreBackend = "bbolt"
	// BackendEtcd is a shared etcd v3 cluster: several custodyd replicas.
	BackendEtcd StoreBackend = "etcd"
)

// Defaults for the etcd store.
const (
	DefaultEtcdPrefix         = "/custody/"
	DefaultEtcdDialTimeout    = 5 * time.Second
	DefaultEtcdRequestTimeout = 2 * time.Second
)

// EtcdConfig says how to reach the etcd cluster. TLS with a client
// certificate is required: the store never talks to etcd in the clear.
type EtcdConfig struct {
	// Endpoints are the members' client URLs (https://host:port).
	Endpoints []string `yaml:"endpoints"`
	// CAFile holds the CA certificates that issued the members' certificates.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are this replica's client certificate and key.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Prefix is this vault's key prefix in the cluster; it starts and ends
	// with "/" (default /custody/). Replicas of one vault share it; two
	// vaults on one cluster must not.
	Prefix string `yaml:"prefix"`
	// DialTimeout bounds the first connection at start (default 5s).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// RequestTimeout bounds each etcd call (default 2s). It is also how
	// quickly an unreachable cluster is noticed: requests are refused with
	// UNAVAILABLE within about a second plus this bound.
	RequestTimeout time.Duration `yaml:"request_timeout"`
}

// Valid reports whether b is a known backend.
func (b StoreBackend) Valid() bool { return b == BackendBbolt || b == BackendEtcd }

func (s *StoreConfig) applyDefaults() {
	if s.Backend == "" {
		s.Backend = BackendBbolt
	}
	switch s.Backend {
	case BackendBbolt:
		setString(&s.Path, DefaultStorePath)
	case BackendEtcd:
		setString(&s.Etcd.Prefix, DefaultEtcdPrefix)
		if s.Etcd.DialTimeout == 0 {
			s.Etcd.DialTimeout = DefaultEtcdDialTimeout
		}
		if s.Etcd.RequestTimeout == 0 {
			s.Etcd.RequestTimeout = DefaultEtcdRequestTimeout
		}
	}
}

// String describes the store for logs and errors: the backend and where it is.
func (s StoreConfig) String() string {
	if s.Backend == BackendEtcd {
		return "etcd " + strings.Join(s.Etcd.Endpoints, ",") + " prefix " + s.Etcd.Prefix
	}
	return "bbolt " + s.Path
}

func (s StoreConfig) validate(ps *problems) {
	switch s.Backend {
	case BackendBbolt:
		checkStorePath(ps, "store.path", s.Path)
		if !s.Etcd.empty() {
			ps.add("store.etcd", "is only used with store.backend: etcd")
		}
	case BackendEtcd:
		if s.Path != "" {
			ps.add("store.path", "is only used with store.backend: bbolt")
		}
		s.Etcd.validate(ps)
	default:
		ps.add("store.backend", "%q is not one of bbolt, etcd", s.Backend)
	}
}

func (e EtcdConfig) empty() bool {
	return len(e.Endpoints) == 0 && e.CAFile == "" && e.CertFile == "" && e.KeyFile == "" &&
		e.Prefix == "" && e.DialTimeout == 0 && e.RequestTimeout == 0
}

const (
	minEtcdTimeout = 100 * time.Millisecond
	maxEtcdTimeout = time.Minute
)

func (e EtcdConfig) validate(ps *problems) {
	if len(e.Endpoints) == 0 {
		ps.add("store.etcd.endpoints", "at least one https:// URL is required")
	}
	seen := map[string]bool{}
	for i, ep := range e.Endpoints {
		p := "store.etcd.endpoints[" + strconv.Itoa(i) + "]"
		u, err := url.Parse(ep)
		switch {
		case err != nil || u.Host == "":
			ps.add(p, "%q is not a URL such as https://10.0.0.1:2379", ep)
			continue
		case u.Scheme != "https":
			ps.add(p, "%q must use https: the store never talks to etcd in the clear", ep)
		case u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil:
			ps.add(p, "%q must be scheme://host:port only", ep)
		}
		if _, port, err := net.SplitHostPort(u.Host); err != nil || port == "" {
			ps.add(p, "%q needs a port (etcd's client port is usually 2379)", ep)
		}
		if seen[ep] {
			ps.add(p, "%q is listed more than once", ep)
		}
		seen[ep] = true
	}
	checkFile(ps, "store.etcd.ca_file", e.CAFile)
	checkFile(ps, "store.etcd.cert_file", e.CertFile)
	if checkFile(ps, "store.etcd.key_file", e.KeyFile) {
		if st, err := os.Stat(e.KeyFile); err == nil && st.Mode().Perm()&0o007 != 0 {
			ps.add("store.etcd.key_file", "file is accessible by others (mode %#o); chmod 600 it", st.Mode().Perm())
		}
	}
	if !strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") || len(e.Prefix) < 2 {
		ps.add("store.etcd.prefix", "%q must start and end with / and not be / alone (e.g. /custody/prod/)", e.Prefix)
	}
	if e.DialTimeout < minEtcdTimeout || e.DialTimeout > maxEtcdTimeout {
		ps.add("store.etcd.dial_timeout", "%s is out of range %s..%s", e.DialTimeout, minEtcdTimeout, maxEtcdTimeout)
	}
	if e.RequestTimeout < minEtcdTimeout || e.RequestTimeout > maxEtcdTimeout {
		ps.add("store.etcd.request_timeout", "%s is out of range %s..%s", e.RequestTimeout, minEtcdTimeout, maxEtcdTimeout)
	}
}
