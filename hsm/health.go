package hsm

import (
	"os"
	"strings"
)

// tokenDirPresent is a SoftHSM-specific liveness check: SoftHSM's file
// backend keeps serving cached objects after its token directory is removed,
// so the only reliable sign that the token is gone is the directory itself.
// For other profiles it reports true and the PKCS#11 probes decide.
func (m *Module) tokenDirPresent() bool {
	if !m.profile.FileTokenDir {
		return true
	}
	dir := softhsmTokenDir()
	if dir == "" {
		return true
	}
	_, err := os.Stat(dir)
	return err == nil
}

// softhsmTokenDir reads directories.tokendir from the SoftHSM configuration
// the library itself uses (SOFTHSM2_CONF or the system default).
func softhsmTokenDir() string {
	conf := os.Getenv("SOFTHSM2_CONF")
	if conf == "" {
		conf = "/etc/softhsm/softhsm2.conf"
	}
	b, err := os.ReadFile(conf)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if k, v, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == "directories.tokendir" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
