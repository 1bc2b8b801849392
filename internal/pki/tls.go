package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// ServerTLSConfig returns the gRPC listener's TLS configuration: TLS 1.3
// only, serving the certificate chain in certFile with the key in keyFile,
// and requiring every client to present a certificate that verifies against
// the CA certificates in clientCAFile (PEM). Derive the caller's identity
// from the verified leaf with Identity.
func ServerTLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	pool, err := loadPool(clientCAFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}, nil
}

// ClientTLSConfig returns a client's TLS configuration: TLS 1.3 only,
// presenting the certificate in certFile with the key in keyFile, and
// trusting only the CA certificates in caFile for a server named serverName
// (a host name or IP address that must appear in the server's SANs).
func ClientTLSConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	if serverName == "" {
		return nil, fmt.Errorf("%w: server name is required", ErrInvalid)
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}

// loadKeyPair wraps tls.LoadX509KeyPair; its errors name files, never key bytes.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w: load key pair %s, %s: %w", ErrInvalid, certFile, keyFile, err)
	}
	return cert, nil
}

// loadPool reads a PEM file that must hold at least one certificate and
// nothing unparsable.
func loadPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: read ca file: %w", ErrInvalid, err)
	}
	certs, err := parseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%w: ca file %s: %w", ErrInvalid, file, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
