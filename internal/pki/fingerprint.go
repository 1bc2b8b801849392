package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
)

// CertFingerprint is the lower-case hex SHA-256 of a certificate's DER: how
// the key ceremony names the client CAs it trusts.
func CertFingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// CAFingerprints returns the fingerprints (CertFingerprint) of every
// certificate in a PEM CA file, sorted, without duplicates.
func CAFingerprints(file string) ([]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: read ca file: %w", ErrInvalid, err)
	}
	certs, err := parseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%w: ca file %s: %w", ErrInvalid, file, err)
	}
	out := make([]string, 0, len(certs))
	for _, c := range certs {
		out = append(out, CertFingerprint(c))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ChainRoots returns the fingerprints of the last certificate of each
// verified chain (the trust anchor the TLS layer found in the CA pool), in
// chain order, without duplicates.
func ChainRoots(chains [][]*x509.Certificate) []string {
	var out []string
	for _, ch := range chains {
		if len(ch) == 0 {
			continue
		}
		if fp := CertFingerprint(ch[len(ch)-1]); !slices.Contains(out, fp) {
			out = append(out, fp)
		}
	}
	return out
}

// SPKIHash is the lower-case hex SHA-256 of a certificate's DER
// SubjectPublicKeyInfo, as grants pin it (the digest in an "spki:"
// identity, without the prefix).
func SPKIHash(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}
