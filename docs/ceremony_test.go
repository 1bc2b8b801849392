package docs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCeremonyGuide runs every command of ceremony.md, in order, in an empty
// directory with `make run`'s vault: officers' keys (one on a SoftHSM
// "smartcard"), the relay's transport key, the ceremony, the transcript
// checks, the relay storing and fetching its data key (and opening it with
// openssl), the lists of what is in force, a time-locked grant proposal
// with two approvals and a veto, and an offline signature.
func TestCeremonyGuide(t *testing.T) {
	dir := t.TempDir()
	v := startDevVault(t, dir)
	subst := v.ports()
	// The page starts the dev vault itself; the test already did, on free ports.
	subst["custodyd --dev --dev-dir .custody-dev &"] = ": custodyd --dev --dev-dir .custody-dev is running, started by the test"
	s := &session{dir: dir, subst: subst, stdin: yes(40),
		env: []string{"CUSTODY_ADDR=", "CUSTODY_CA=", "CUSTODY_CERT=", "CUSTODY_KEY=", "CUSTODY_OUTPUT="}}
	s.run(t, shellBlocks(t, "ceremony.md"), 10*time.Minute)

	// The relay really holds a 32-byte key, and nothing else holds it.
	if b, err := os.ReadFile(filepath.Join(dir, "data-key.bin")); err != nil || len(b) != 32 {
		t.Fatalf("data-key.bin: %d bytes, %v", len(b), err)
	}
	// The transcript records the pinned recipient key on the grant.
	tr, err := os.ReadFile(filepath.Join(dir, "transcript", "transcript.json"))
	if err != nil || !strings.Contains(string(tr), `"recipient_keys"`) {
		t.Fatalf("transcript.json lacks the grant's recipient key: %v", err)
	}
}
