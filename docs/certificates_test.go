package docs

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestCertificatesGuide runs certificates.md: an openssl CA, server and
// client certificates, then a production-mode custodyd on a SoftHSM token
// made as the page says (with SOFTHSM2_CONF), which must serve the
// operator and refuse the relay before any ceremony. /etc/custody becomes a
// temporary directory and 8443/9090 free ports.
func TestCertificatesGuide(t *testing.T) {
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc-custody")
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	s := &session{dir: dir, subst: map[string]string{
		"C=/etc/custody ": "C=" + etc + " ",
		"127.0.0.1:8443":  grpcAddr,
		"127.0.0.1:9090":  httpAddr,
	}, env: []string{"SOFTHSM2_CONF=", "CUSTODY_ADDR=", "CUSTODY_CA=", "CUSTODY_CERT=", "CUSTODY_KEY=", "CUSTODY_OUTPUT="}}
	s.run(t, shellBlocks(t, "certificates.md"), 5*time.Minute)
}

// freeAddr returns a 127.0.0.1 address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}
