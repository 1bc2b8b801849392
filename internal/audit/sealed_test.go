package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"errors"
	"io"
	"sync/atomic"
	"testing"
)

// lateSigner is a sealed custodyd's audit key: known public half, no
// signatures until login.
type lateSigner struct {
	pub   crypto.PublicKey
	ready atomic.Pointer[ecdsa.PrivateKey]
}

func (s *lateSigner) Public() crypto.PublicKey { return s.pub }

func (s *lateSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	k := s.ready.Load()
	if k == nil {
		return nil, ErrSignerNotReady
	}
	return k.Sign(r, d, o)
}

// TestRecordsBeforeTheSignerIsReadyAreChainedAndCoveredLater: a sealed
// custodyd writes refused unseal attempts to the log before it can sign;
// checkpoints wait quietly, closing does not fail, and the first
// checkpoint after login covers those records.
func TestRecordsBeforeTheSignerIsReadyAreChainedAndCoveredLater(t *testing.T) {
	key := newKey(t)
	dir := t.TempDir()
	s := &lateSigner{pub: key.Public()}
	l, err := Open(context.Background(), dir, s, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 3)
	if _, err := l.Checkpoint(context.Background()); !errors.Is(err, ErrSignerNotReady) {
		t.Fatalf("checkpoint while sealed: %v", err)
	}
	if st := l.Stats(); st.CheckpointErrors != 0 || st.Records != 3 {
		t.Fatalf("stats while sealed: %+v", st)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatalf("close while sealed: %v", err)
	}
	// Next start, this time unsealed: the records are there and a
	// checkpoint signed now covers them.
	s2 := &lateSigner{pub: key.Public()}
	l2, err := Open(context.Background(), dir, s2, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close(context.Background())
	appendN(t, l2, 1)
	s2.ready.Store(key)
	cp, err := l2.Checkpoint(context.Background())
	if err != nil || cp.Seq != 4 {
		t.Fatalf("checkpoint after login: %+v %v", cp, err)
	}
	if _, err := Verify(dir, key.Public(), nil); err != nil {
		t.Fatalf("verify: %v", err)
	}
}
