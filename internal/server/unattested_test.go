package server_test

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/testenv"
)

// unsigning is what root holds of the audit key without the PIN: its
// public half. It signs nothing.
type unsigning struct{ pub crypto.PublicKey }

func (u unsigning) Public() crypto.PublicKey { return u.pub }
func (u unsigning) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, audit.ErrSignerNotReady
}

// TestRecordsAppendedWhileCustodydWasDownAreNamedAtTheNextStart: the chain
// has no key, so root with write access to the audit directory can append
// well-chained records while custodyd is stopped, and they verify. The next
// start cannot tell them from the last records before a crash, but it does
// not sign over them silently: before anything is signed it writes an
// audit.unattested record naming the span, which the start-up checkpoint
// then covers. A clean stop and start writes none.
func TestRecordsAppendedWhileCustodydWasDownAreNamedAtTheNextStart(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	x := ctx(t)
	if _, err := e.Crypto(t, "relay").Encrypt(x, &custodyv1.EncryptRequest{KeyName: "demo", Plaintext: []byte("m")}); err != nil {
		t.Fatal(err)
	}
	pub := e.D.AuditPK
	e.Restart(t) // a clean stop: its checkpoint covers everything
	if got := unattested(t, e.Config.Audit.Dir); len(got) != 0 {
		t.Fatalf("after a clean stop and start: %q", got)
	}
	e.Stop(t)

	// Root appends three records that look like a relay's decrypts.
	l, err := audit.Open(context.Background(), e.Config.Audit.Dir, unsigning{pub},
		audit.Options{Replica: e.Config.ReplicaID, InstanceID: e.Config.ReplicaID, CheckpointInterval: -1,
			StoreRevision: func() uint64 { return 0 }}) // records carry the last one's store revision, as custodyd's do
	if err != nil {
		t.Fatal(err)
	}
	first, _ := l.Head()
	for range 3 {
		if _, err := l.Append(context.Background(), audit.Record{Time: time.Now(), Identity: e.Cert["relay"].Identity,
			Role: "relay", Method: "Decrypt", Key: "demo", Outcome: audit.OutcomeOK, Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	last, _ := l.Head()
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Verify(e.Config.Audit.Dir, pub, nil); err != nil {
		t.Fatalf("the appended records do not even verify: %v", err)
	}

	e.Restart(t)
	want := fmt.Sprintf("records %d to %d were after the newest signed checkpoint (%d)", first+1, last, first)
	got := unattested(t, e.Config.Audit.Dir)
	if len(got) != 1 || !strings.HasPrefix(got[0], want) {
		t.Fatalf("unattested records after the start: %q, want one starting %q", got, want)
	}
	// The start-up checkpoint covers the note, so it cannot be cut off
	// without breaking a signed checkpoint.
	waitFor(t, func() bool {
		cp, ok := e.D.Audit.LatestCheckpoint()
		return ok && cp.Seq > last
	})
	if _, err := audit.Verify(e.Config.Audit.Dir, pub, nil); err != nil {
		t.Fatal(err)
	}
}

func unattested(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	if err := readRecords(dir, func(r audit.Record) {
		if r.Method == "audit.unattested" {
			if r.Identity != "custodyd" {
				t.Errorf("audit.unattested under %q", r.Identity)
			}
			out = append(out, r.Detail)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return out
}
