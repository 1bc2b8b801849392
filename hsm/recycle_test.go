package hsm_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/hsm/hsmtest"
)

// TestRecycleUnderLoadFailsNoCall runs every kind of call from several
// goroutines on a module that recycles every 100 session objects, and
// expects every call to succeed, several recycles, each reported to Observe,
// and the keys (handles re-indexed, public keys re-read) still working.
func TestRecycleUnderLoadFailsNoCall(t *testing.T) {
	tok := hsmtest.New(t)
	cfg := tok.Config()
	cfg.RecycleAfterSessionObjects = 100
	var mu sync.Mutex
	var pauses []time.Duration
	var recycleErrs int
	cfg.Observe = func(op string, d time.Duration, err error) {
		if op != "recycle" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		pauses = append(pauses, d)
		if err != nil {
			recycleErrs++
		}
	}
	m, err := hsm.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	ctx := ctxT(t)
	k, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
	if err != nil {
		t.Fatal(err)
	}
	sk, _, err := m.CreateKey(ctx, hsm.KindECDSAP256, "signer")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := m.PublicKey(ctx, sk)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	const workers, rounds = 4, 60 // 4 x 60 x 4 = 960 session objects: ~9 recycles
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				wrapped, dk, err := m.GenerateDataKey(ctx, k, true)
				if err != nil {
					errs <- err
					continue
				}
				got, err := m.UnwrapDataKey(ctx, k, wrapped)
				if err != nil || string(got) != string(dk) {
					errs <- errors.Join(errors.New("unwrap"), err)
				}
				if _, _, err := m.UnwrapDataKeyFor(ctx, k, wrapped, &rk.PublicKey); err != nil {
					errs <- err
				}
				d := sha256.Sum256([]byte{byte(w), byte(i)})
				sig, err := m.Sign(ctx, sk, d[:])
				if err != nil || !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
					errs <- errors.Join(errors.New("sign"), err)
				}
				sdk, iv, sealed, err := m.GenerateSealedDataKey(ctx, k, nil)
				if err == nil {
					var got []byte
					got, err = m.OpenSealedDataKey(ctx, k, iv, sealed, nil)
					if err == nil && string(got) != string(sdk) {
						err = errors.New("sealed key opened to another key")
					}
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a call failed during recycling: %v", err)
	}
	st := m.Stats()
	mu.Lock()
	defer mu.Unlock()
	if st.Recycles < 5 || recycleErrs != 0 || uint64(len(pauses)) < st.Recycles {
		t.Fatalf("%d recycles (%d observed, %d failed) over %d session objects, want at least 5, none failed", st.Recycles, len(pauses), recycleErrs, st.SessionObjects)
	}
	if st.Recoveries != 0 || st.DeviceErrors != 0 || st.State != hsm.StateReady {
		t.Fatalf("recycling looked like a fault: %+v", st)
	}
	var longest time.Duration
	for _, p := range pauses {
		longest = max(longest, p)
	}
	t.Logf("%d recycles over %d session objects, longest pause %v", st.Recycles, st.SessionObjects, longest)
	if n, err := hsm.CountSessionObjects(ctx, m); err != nil || n != 0 {
		t.Fatalf("%d session objects left: %v", n, err)
	}
}

func TestNoRecycleUnlessConfigured(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	k, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
	if err != nil {
		t.Fatal(err)
	}
	for range 300 {
		if _, _, err := m.GenerateDataKey(ctx, k, false); err != nil {
			t.Fatal(err)
		}
	}
	if st := m.Stats(); st.SessionObjects != 300 || st.Recycles != 0 {
		t.Fatalf("session objects %d, recycles %d; want 300 and 0", st.SessionObjects, st.Recycles)
	}
}

// TestCallsWaitForARecycleBoundedByTheirContext holds the recycle gate and
// checks that a call waits for it rather than failing, gives up when its
// own context ends (not with ErrUnavailable), and proceeds once it opens.
func TestCallsWaitForARecycleBoundedByTheirContext(t *testing.T) {
	m, _ := hsmtest.Open(t)
	ctx := ctxT(t)
	k, _, err := m.CreateKey(ctx, hsm.KindAES256, "master")
	if err != nil {
		t.Fatal(err)
	}
	release := hsm.HoldCalls(m)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, _, err = m.Encrypt(short, k, []byte("x"), nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("call during a recycle with a short deadline: %v, want its deadline", err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := m.Encrypt(ctx, k, []byte("x"), nil)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("call went through a held gate: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("held call failed after the gate opened: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("held call did not proceed after the gate opened")
	}
}

// TestRecycleAfterDefaultsFromTheProfile: a module whose profile leaks
// session objects (SoftHSM) recycles by default; others only when
// configured; -1 never.
func TestRecycleAfterDefaultsFromTheProfile(t *testing.T) {
	hsmtest.ForEach(t, func(t *testing.T, tok *hsmtest.Token) {
		for _, tc := range []struct{ configured, leaking, other int }{
			{0, hsm.DefaultRecycleAfterSessionObjects, 0},
			{1234, 1234, 1234},
			{-1, 0, 0},
		} {
			cfg := tok.Config()
			cfg.RecycleAfterSessionObjects = tc.configured
			m, err := hsm.Open(ctxT(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.other
			if m.Profile().LeaksSessionObjects {
				want = tc.leaking
			}
			if got := m.RecycleAfter(); got != want {
				t.Errorf("%s, configured %d: recycles after %d, want %d", m.Profile().Name, tc.configured, got, want)
			}
			m.Close()
		}
	})
}
