// Package pki derives authorisation identities from client certificates,
// builds the mTLS configurations custodyd and its clients use, and creates
// the throw-away certificate authority behind `custodyd --dev`.
//
// Invariants:
//
//   - An identity is a pure function of the certificate (see Identity): the
//     one URI SAN, or "spki:" and the SHA-256 of the public key. The two
//     forms cannot collide, because a URI SAN with the "spki" scheme is
//     refused rather than taken as an identity.
//   - Every tls.Config built here requires TLS 1.3, and the server side
//     requires and verifies a client certificate chaining to the client CA.
//   - Private keys are written with mode 0600 and never logged or put in errors.
package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Errors returned by this package wrap one of them.
var (
	// ErrIdentity: no identity can be derived from the certificate.
	ErrIdentity = errors.New("pki: no usable identity in certificate")
	// ErrInvalid: a certificate, key or PEM file is missing, malformed or
	// does not fit its purpose.
	ErrInvalid = errors.New("pki: invalid certificate or key")
)

// SPKIPrefix starts every identity derived from a public key.
const SPKIPrefix = "spki:"

// Identity returns the identity that authorisation uses for cert, normally
// the verified leaf certificate of an mTLS peer:
//
//   - if cert has exactly one URI SAN, that URI as url.URL.String renders
//     it (for example "spiffe://custody.dev/relay"); a URI whose scheme is
//     "spki" (any case) is refused with ErrIdentity, so that a certificate
//     cannot claim another key's SPKI identity;
//   - otherwise (no URI SAN, or more than one), "spki:" followed by the
//     lower-case hex SHA-256 of the certificate's DER SubjectPublicKeyInfo
//     (cert.RawSubjectPublicKeyInfo), 64 hex digits. Re-issuing a certificate
//     for the same key keeps this identity; a new key changes it.
//
// Identity does not verify the certificate; the TLS handshake has done so.
func Identity(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: no certificate", ErrIdentity)
	}
	if len(cert.URIs) == 1 {
		u := cert.URIs[0]
		if strings.EqualFold(u.Scheme, "spki") {
			return "", fmt.Errorf("%w: uri san uses the reserved spki scheme", ErrIdentity)
		}
		s := u.String()
		if s == "" {
			return "", fmt.Errorf("%w: empty uri san", ErrIdentity)
		}
		return s, nil
	}
	if len(cert.RawSubjectPublicKeyInfo) == 0 {
		return "", fmt.Errorf("%w: certificate has no subject public key info", ErrIdentity)
	}
	return SPKIIdentity(cert.RawSubjectPublicKeyInfo), nil
}

// SPKIIdentity returns "spki:" followed by the lower-case hex SHA-256 of a
// DER SubjectPublicKeyInfo: the identity of a certificate without exactly
// one URI SAN.
func SPKIIdentity(rawSubjectPublicKeyInfo []byte) string {
	sum := sha256.Sum256(rawSubjectPublicKeyInfo)
	return SPKIPrefix + hex.EncodeToString(sum[:])
}
