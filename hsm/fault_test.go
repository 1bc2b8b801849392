package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// TestTokenRemovedFailsFastAndRecovers moves the token directory away while
// operations are in flight, then back, and expects ErrUnavailable quickly and
// then service again from the same process with the same keys.
func TestTokenRemovedFailsFastAndRecovers(t *testing.T) {
	m, tok := hsmtest.Open(t)
	tokenRemovedAndRestored(t, m, tok)
}

// TestSealedTokenRemovedRecoversWithTheKeptPIN is the same drill on a
// sealed start: the module logged in with a PIN that was then replaced
// (C_SetPIN) by one that only the module keeps — as after a key ceremony or
// an unseal, where no file and no caller holds it. Recovery logs in again
// with the kept PIN, which is the only copy.
func TestSealedTokenRemovedRecoversWithTheKeptPIN(t *testing.T) {
	m, tok := hsmtest.Open(t)
	fresh := []byte("sealed-pin-" + time.Now().Format("150405.000000000"))
	ch, err := m.ChangePIN(ctxT(t), fresh)
	if err != nil {
		t.Fatal(err)
	}
	ch.Done()
	clear(fresh) // nobody but the module has it now
	tokenRemovedAndRestored(t, m, tok)
	// The installer's PIN is retired for good.
	cfg := tok.Config()
	if err := probeLogin(t, cfg); !errors.Is(err, hsm.ErrLogin) {
		t.Fatalf("installer PIN after ChangePIN: %v, want ErrLogin", err)
	}
}

func tokenRemovedAndRestored(t *testing.T, m *hsm.Module, tok *hsmtest.Token) {
	t.Helper()
	ctx := ctxT(t)
	k, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
	if err != nil {
		t.Fatal(err)
	}
	sk, _, err := m.CreateKey(ctx, hsm.KindECDSAP256, "signer")
	if err != nil {
		t.Fatal(err)
	}
	iv, ct, err := m.Encrypt(ctx, k, []byte("before"), nil)
	if err != nil {
		t.Fatal(err)
	}

	// Load in the background so sessions are in use while the token goes.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _, _ = m.Encrypt(ctx, k, []byte("load"), nil)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)

	moved := tok.TokenDir + ".away"
	if err := os.Rename(tok.TokenDir, moved); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var lastErr error
	for time.Since(start) < 3*time.Second {
		opCtx, cancel := context.WithTimeout(ctx, time.Second)
		_, lastErr = m.Decrypt(opCtx, k, iv, ct, nil)
		cancel()
		if errors.Is(lastErr, hsm.ErrUnavailable) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !errors.Is(lastErr, hsm.ErrUnavailable) {
		t.Fatalf("with the token gone: %v, want ErrUnavailable", lastErr)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("ErrUnavailable took %v, want < 1s", d)
	}
	// While it is gone, calls fail fast rather than hang.
	t0 := time.Now()
	if _, err := m.Sign(ctx, sk, make([]byte, 32)); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("sign with the token gone: %v", err)
	}
	if d := time.Since(t0); d > 100*time.Millisecond {
		t.Fatalf("failing call took %v", d)
	}
	if st := m.Stats().State; st == hsm.StateReady {
		t.Fatalf("state %v while the token is gone", st)
	}

	if err := os.Rename(moved, tok.TokenDir); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pt, err := m.Decrypt(ctx, k, iv, ct, nil)
		if err == nil {
			if !bytes.Equal(pt, []byte("before")) {
				t.Fatalf("recovered decrypt = %q", pt)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not recovered after the token came back: %v (stats %+v)", err, m.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if _, err := m.Sign(ctx, sk, make([]byte, 32)); err != nil {
		t.Fatalf("sign after recovery: %v", err)
	}
	st := m.Stats()
	if st.State != hsm.StateReady || st.Recoveries < 1 {
		t.Fatalf("stats after recovery: %+v", st)
	}
	t.Logf("recovered: %+v", st)
}

// TestRecoversAfterTheLibraryIsFinalizedBehindItsBack: another user of the
// library calls C_Finalize (every session and handle dies). The module must
// fail with ErrUnavailable, re-initialise itself, probe the token again
// (its capability decisions are never carried over from the old
// generation) and serve the same keys.
func TestRecoversAfterTheLibraryIsFinalizedBehindItsBack(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		m := tok.Open(t)
		ctx := ctxT(t)
		k, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
		if err != nil {
			t.Fatal(err)
		}
		sk, _, err := m.CreateKey(ctx, hsm.KindECDSAP256, "signer")
		if err != nil {
			t.Fatal(err)
		}
		iv, ct, err := m.Encrypt(ctx, k, []byte("before"), nil)
		if err != nil {
			t.Fatal(err)
		}
		before := m.Capabilities()
		if err := hsm.FinalizeBehindItsBack(m); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Decrypt(ctx, k, iv, ct, nil); !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("first call after C_Finalize: %v, want ErrUnavailable", err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			pt, err := m.Decrypt(ctx, k, iv, ct, nil)
			if err == nil {
				if !bytes.Equal(pt, []byte("before")) {
					t.Fatalf("recovered decrypt = %q", pt)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not recovered: %v (stats %+v)", err, m.Stats())
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := m.Sign(ctx, sk, make([]byte, 32)); err != nil {
			t.Fatalf("sign after recovery: %v", err)
		}
		after := m.Capabilities()
		if after.Generation <= before.Generation {
			t.Fatalf("capabilities of generation %d after recovery, was %d: not probed again", after.Generation, before.Generation)
		}
		if after.OAEPHash() != before.OAEPHash() || after.Wrap.Mechanism != before.Wrap.Mechanism || after.GCM.Mode != before.GCM.Mode {
			t.Fatalf("re-probe decided differently on the same token: %+v then %+v", before, after)
		}
		if st := m.Stats(); st.State != hsm.StateReady || st.Recoveries < 1 {
			t.Fatalf("stats after recovery: %+v", st)
		}
	})
}

// TestConcurrentMixedOperations runs 32 goroutines of mixed operations under
// -race and checks every result: SoftHSM crashes the process if two
// goroutines share a session.
func TestConcurrentMixedOperations(t *testing.T) {
	hsmtest.ForEach(t, testConcurrentMixedOperations)
}

func testConcurrentMixedOperations(t *testing.T, tok *hsmtest.Token) {
	m := tok.Open(t)
	ctx := ctxT(t)
	aesK, _, _ := m.CreateKey(ctx, hsm.KindAES256, "aes")
	macK, _, _ := m.CreateKey(ctx, hsm.KindHMACSHA256, "mac")
	ecK, _, _ := m.CreateKey(ctx, hsm.KindECDSAP256, "ec")
	// Ed25519 where the token has it (NSS has not): a second signing kind.
	edKind := hsm.KindEd25519
	if _, missing := missingKinds[tok.Kind][edKind]; missing {
		edKind = hsm.KindECDSAP384
	}
	edK, _, _ := m.CreateKey(ctx, edKind, "ed")
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				msg := []byte{byte(g), byte(i), 7, 7}
				var err error
				switch (g + i) % 5 {
				case 0:
					var iv, ct, pt []byte
					iv, ct, err = m.Encrypt(ctx, aesK, msg, msg)
					if err == nil {
						pt, err = m.Decrypt(ctx, aesK, iv, ct, msg)
						if err == nil && !bytes.Equal(pt, msg) {
							err = errors.New("decrypt mismatch")
						}
					}
				case 1:
					var mac []byte
					var ok bool
					mac, err = m.MAC(ctx, macK, msg)
					if err == nil {
						ok, err = m.VerifyMAC(ctx, macK, msg, mac)
						if err == nil && !ok {
							err = errors.New("mac mismatch")
						}
					}
				case 2:
					var sig []byte
					var ok bool
					d := make([]byte, 32)
					copy(d, msg)
					sig, err = m.Sign(ctx, ecK, d)
					if err == nil {
						ok, err = m.Verify(ctx, ecK, d, sig)
						if err == nil && !ok {
							err = errors.New("ecdsa verify failed")
						}
					}
				case 3:
					var sig []byte
					var ok bool
					in := msg
					if edKind == hsm.KindECDSAP384 {
						in = make([]byte, 48)
						copy(in, msg)
					}
					sig, err = m.Sign(ctx, edK, in)
					if err == nil {
						ok, err = m.Verify(ctx, edK, in, sig)
						if err == nil && !ok {
							err = errors.New(edKind.String() + " verify failed")
						}
					}
				case 4:
					var w, pt, got []byte
					w, pt, err = m.GenerateDataKey(ctx, aesK, true)
					if err == nil {
						got, err = m.UnwrapDataKey(ctx, aesK, w)
						if err == nil && !bytes.Equal(got, pt) {
							err = errors.New("data key mismatch")
						}
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := m.Stats()
	if st.SessionsOpen > st.SessionsMax {
		t.Errorf("%d sessions open, max %d", st.SessionsOpen, st.SessionsMax)
	}
	if n, err := hsm.CountSessionObjects(ctx, m); err != nil || n != 0 {
		t.Errorf("session objects left: %d %v", n, err)
	}
}

func TestPoolWaitHonoursContext(t *testing.T) {
	hsmtest.ForEach(t, testPoolWaitHonoursContext)
}

func testPoolWaitHonoursContext(t *testing.T, tok *hsmtest.Token) {
	cfg := tok.Config()
	cfg.MaxSessions = 1
	m, err := hsm.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	k, _, _ := m.CreateKey(ctxT(t), hsm.KindAES256, "k")
	// Hold the only session, then ask for another with a short deadline.
	held := make(chan struct{})
	release := make(chan struct{})
	go func() {
		_ = hsm.Raw(context.Background(), m, k, func(_ *pkcs11.Ctx, _ pkcs11.SessionHandle, _ pkcs11.ObjectHandle) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, _, err = m.Encrypt(ctx, k, []byte("x"), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Fatalf("waited %v", d)
	}
	close(release)
	if m.Stats().PoolWaits == 0 {
		t.Fatal("pool wait not counted")
	}
}
