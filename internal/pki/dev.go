package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"
)

// Dev PKI parameters.
const (
	// DevValidity is how long generated dev certificates are valid.
	DevValidity = 30 * 24 * time.Hour
	// DevMinRemaining is the validity an existing file must still have to be
	// reused; anything closer to expiry is regenerated.
	DevMinRemaining = 24 * time.Hour
	// DevTrustDomain is the SPIFFE trust domain of dev client certificates.
	DevTrustDomain = "custody.dev"
	// clockSkew backdates NotBefore so that slightly slow clocks accept new certs.
	clockSkew = 5 * time.Minute
)

var devRoleRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// DevPKI lists the files GenerateDev wrote or reused.
type DevPKI struct {
	// Dir holds all the files.
	Dir string
	// CAFile is the CA certificate (ca.pem): the server's client CA and the
	// clients' root.
	CAFile string
	// CAKeyFile is the CA's private key (ca-key.pem), kept so that later runs
	// can issue certificates for new roles under the same CA.
	CAKeyFile string
	// ServerCertFile and ServerKeyFile are server.pem and server-key.pem,
	// valid for localhost, 127.0.0.1 and ::1.
	ServerCertFile, ServerKeyFile string
	// Clients maps each requested role to its client certificate.
	Clients map[string]DevClient
}

// DevClient is one role's client certificate.
type DevClient struct {
	// CertFile and KeyFile are <role>.pem and <role>-key.pem.
	CertFile, KeyFile string
	// Identity is the certificate's identity as Identity returns it:
	// spiffe://custody.dev/<role>.
	Identity string
}

// GenerateDev makes (or reuses) the development PKI in dir for
// `custodyd --dev`: a CA (ca.pem, ca-key.pem), a server certificate
// (server.pem, server-key.pem; SANs localhost, 127.0.0.1, ::1; server auth)
// and, for each role, a client certificate (<role>.pem, <role>-key.pem;
// CN=role, URI SAN spiffe://custody.dev/<role>; client auth). Keys are ECDSA
// P-256, certificates are valid for 30 days, key files are 0600 and
// certificates 0644; dir is created 0700 if missing.
//
// It is idempotent: a file set that parses, matches its key, chains to the
// CA, has the expected names and is still valid for more than 24 hours is
// reused unchanged. Anything else is regenerated; a new CA regenerates every
// certificate. Roles must match ^[a-z0-9][a-z0-9-]{0,62}$, be distinct and
// not be "ca" or "server". Concurrent calls on one dir are not supported.
func GenerateDev(dir string, roles []string) (*DevPKI, error) {
	return generateDev(dir, roles, time.Now())
}

func generateDev(dir string, roles []string, now time.Time) (*DevPKI, error) {
	seen := map[string]bool{}
	for _, r := range roles {
		switch {
		case !devRoleRE.MatchString(r):
			return nil, fmt.Errorf("%w: dev role %q must match %s", ErrInvalid, r, devRoleRE)
		case r == "ca" || r == "server":
			return nil, fmt.Errorf("%w: dev role %q is reserved", ErrInvalid, r)
		case seen[r]:
			return nil, fmt.Errorf("%w: dev role %q is listed twice", ErrInvalid, r)
		}
		seen[r] = true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: create dev dir: %w", err)
	}
	p := &DevPKI{
		Dir:            dir,
		CAFile:         filepath.Join(dir, "ca.pem"),
		CAKeyFile:      filepath.Join(dir, "ca-key.pem"),
		ServerCertFile: filepath.Join(dir, "server.pem"),
		ServerKeyFile:  filepath.Join(dir, "server-key.pem"),
		Clients:        map[string]DevClient{},
	}

	ca, caKey, err := loadDevCA(p.CAFile, p.CAKeyFile, now)
	if err != nil {
		ca, caKey, err = newDevCA(p.CAFile, p.CAKeyFile, now)
		if err != nil {
			return nil, err
		}
	}

	server := leafSpec{
		cn:  "localhost",
		dns: []string{"localhost"},
		ips: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		eku: x509.ExtKeyUsageServerAuth,
	}
	if err := ensureLeaf(p.ServerCertFile, p.ServerKeyFile, server, ca, caKey, now); err != nil {
		return nil, err
	}
	for _, r := range roles {
		u := &url.URL{Scheme: "spiffe", Host: DevTrustDomain, Path: "/" + r}
		c := DevClient{
			CertFile: filepath.Join(dir, r+".pem"),
			KeyFile:  filepath.Join(dir, r+"-key.pem"),
			Identity: u.String(),
		}
		spec := leafSpec{cn: r, uris: []*url.URL{u}, eku: x509.ExtKeyUsageClientAuth}
		if err := ensureLeaf(c.CertFile, c.KeyFile, spec, ca, caKey, now); err != nil {
			return nil, err
		}
		p.Clients[r] = c
	}
	return p, nil
}

// leafSpec is what a dev leaf certificate must contain.
type leafSpec struct {
	cn   string
	dns  []string
	ips  []net.IP
	uris []*url.URL
	eku  x509.ExtKeyUsage
}

func (s leafSpec) matches(c *x509.Certificate) bool {
	if c.Subject.CommonName != s.cn || !slices.Equal(c.DNSNames, s.dns) ||
		!slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{s.eku}) ||
		len(c.IPAddresses) != len(s.ips) || len(c.URIs) != len(s.uris) {
		return false
	}
	for i := range s.ips {
		if !c.IPAddresses[i].Equal(s.ips[i]) {
			return false
		}
	}
	for i := range s.uris {
		if c.URIs[i].String() != s.uris[i].String() {
			return false
		}
	}
	return true
}

// ensureLeaf keeps the leaf at certFile/keyFile if it is still good, and
// issues a new one otherwise.
func ensureLeaf(certFile, keyFile string, spec leafSpec, ca *x509.Certificate, caKey crypto.Signer, now time.Time) error {
	if cert, key, err := loadPair(certFile, keyFile); err == nil &&
		usable(cert, now) && spec.matches(cert) && publicKeyMatches(cert, key) &&
		cert.CheckSignatureFrom(ca) == nil {
		return nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	notAfter := now.Add(DevValidity)
	if ca.NotAfter.Before(notAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: spec.cn, Organization: []string{"Custody dev"}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{spec.eku},
		DNSNames:     spec.dns,
		IPAddresses:  spec.ips,
		URIs:         spec.uris,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("pki: issue %s: %w", spec.cn, err)
	}
	return writePair(certFile, keyFile, der, key)
}

func loadDevCA(certFile, keyFile string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	cert, key, err := loadPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	if !cert.IsCA || !usable(cert, now) || !publicKeyMatches(cert, key) || cert.CheckSignatureFrom(cert) != nil {
		return nil, nil, fmt.Errorf("%w: dev ca is not reusable", ErrInvalid)
	}
	return cert, key, nil
}

func newDevCA(certFile, keyFile string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate ca key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Custody dev CA", Organization: []string{"Custody dev"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(DevValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: create dev ca: %w", err)
	}
	if err := writePair(certFile, keyFile, der, key); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: parse new dev ca: %w", err)
	}
	return cert, key, nil
}

// usable reports whether c is already valid at now and stays valid for
// more than DevMinRemaining.
func usable(c *x509.Certificate, now time.Time) bool {
	return !now.Before(c.NotBefore) && c.NotAfter.Sub(now) > DevMinRemaining
}

func publicKeyMatches(c *x509.Certificate, key crypto.Signer) bool {
	pub, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(key.Public())
}

func randomSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

// loadPair reads a one-certificate PEM file and a PKCS#8 PEM key file.
func loadPair(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, nil, err
	}
	if len(certs) != 1 {
		return nil, nil, fmt.Errorf("%w: %s holds %d certificates, want 1", ErrInvalid, certFile, len(certs))
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	block, rest := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, nil, fmt.Errorf("%w: %s is not one PKCS#8 private key", ErrInvalid, keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: cannot parse private key", ErrInvalid, keyFile)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%w: %s: key cannot sign", ErrInvalid, keyFile)
	}
	return certs[0], signer, nil
}

// parseCertsPEM parses every block of a PEM file; each must be a certificate.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: unexpected pem block %q", ErrInvalid, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, fmt.Errorf("%w: trailing data that is not pem", ErrInvalid)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no certificate", ErrInvalid)
	}
	return certs, nil
}

// writePair writes the key (0600) and then the certificate (0644), each
// atomically, so a crash never leaves a certificate next to a foreign key
// that a later run would accept: reuse checks that they match.
func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("pki: marshal key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	clear(pkcs8)
	err = writeFileAtomic(keyFile, keyPEM, 0o600)
	clear(keyPEM)
	if err != nil {
		return err
	}
	return writeFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	// CreateTemp makes the file 0600; chmod only widens certificates.
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}
