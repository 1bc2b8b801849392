package client

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// decryptServer answers Decrypt and BatchDecrypt with the ciphertext as the
// plaintext (or refuses a ciphertext "bad"), recording the batch sizes it
// saw. A Decrypt of "hold" waits until release is closed.
type decryptServer struct {
	custodyv1.UnimplementedCryptoServiceServer
	release chan struct{}
	holding atomic.Int32
	mu      sync.Mutex
	singles int
	batches []int
}

func (s *decryptServer) answer(req *custodyv1.DecryptRequest) (*custodyv1.DecryptResponse, error) {
	if string(req.Ciphertext) == "bad" {
		return nil, status.Error(codes.InvalidArgument, "bad ciphertext")
	}
	return &custodyv1.DecryptResponse{Plaintext: append([]byte("pt:"), req.Ciphertext...), KeyVersion: 1}, nil
}

func (s *decryptServer) Decrypt(ctx context.Context, req *custodyv1.DecryptRequest) (*custodyv1.DecryptResponse, error) {
	if string(req.Ciphertext) == "hold" {
		s.holding.Add(1)
		<-s.release
	}
	s.mu.Lock()
	s.singles++
	s.mu.Unlock()
	return s.answer(req)
}

func (s *decryptServer) BatchDecrypt(ctx context.Context, req *custodyv1.BatchDecryptRequest) (*custodyv1.BatchDecryptResponse, error) {
	s.mu.Lock()
	s.batches = append(s.batches, len(req.Items))
	s.mu.Unlock()
	out := &custodyv1.BatchDecryptResponse{}
	for _, it := range req.Items {
		r, err := s.answer(it)
		if err != nil {
			st := status.Convert(err)
			out.Results = append(out.Results, &custodyv1.BatchDecryptResult{Result: &custodyv1.BatchDecryptResult_Error{
				Error: &custodyv1.ItemError{Code: int32(st.Code()), Message: st.Message()}}})
			continue
		}
		out.Results = append(out.Results, &custodyv1.BatchDecryptResult{Result: &custodyv1.BatchDecryptResult_Response{Response: r}})
	}
	return out, nil
}

func (s *decryptServer) stats() (int, []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.singles, append([]int(nil), s.batches...)
}

// bounded is a context for a test call: a call stuck in a batch that is
// never sent fails the test instead of hanging it.
func bounded(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func startDecryptServer(t *testing.T, tweak func(*Config)) (*Client, *decryptServer) {
	t.Helper()
	p := newTestPKI(t)
	s := &decryptServer{release: make(chan struct{})}
	addr := p.serveTLS(t, 0, func(srv *grpc.Server) { custodyv1.RegisterCryptoServiceServer(srv, s) })
	cfg := p.config(addr)
	cfg.ServerName = "localhost"
	cfg.CoalesceDecrypts = true
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, s
}

// holdSlots makes the coalescer's in-flight requests wait on the server
// until the returned release is called.
func holdSlots(t *testing.T, c *Client, s *decryptServer) (release func()) {
	t.Helper()
	var wg sync.WaitGroup
	for range coalesceInFlight {
		wg.Go(func() {
			if _, err := c.Decrypt(bounded(t), "k", []byte("hold"), nil); err != nil {
				t.Errorf("held decrypt: %v", err)
			}
		})
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.holding.Load() < coalesceInFlight {
		if time.Now().After(deadline) {
			t.Fatal("the held decrypts never reached the server")
		}
		time.Sleep(time.Millisecond)
	}
	var once sync.Once
	return func() { once.Do(func() { close(s.release); wg.Wait() }) }
}

func TestCoalescedDecryptAloneIsSentAtOnceAsADecrypt(t *testing.T) {
	c, s := startDecryptServer(t, func(cfg *Config) { cfg.CoalesceLinger = time.Hour })
	for i := range 5 {
		pt, err := c.Decrypt(bounded(t), "k", []byte{byte('a' + i)}, nil)
		if err != nil || string(pt) != "pt:"+string(rune('a'+i)) {
			t.Fatalf("decrypt %d = %q, %v", i, pt, err)
		}
	}
	if singles, batches := s.stats(); singles != 5 || len(batches) != 0 {
		t.Fatalf("sequential calls: %d Decrypts and batches %v; want 5 Decrypts sent at once (an hour's linger never ran)", singles, batches)
	}
}

func TestCoalescedDecryptsFillABatchAndEachGetsItsOwnResult(t *testing.T) {
	c, s := startDecryptServer(t, func(cfg *Config) { cfg.CoalesceLinger, cfg.CoalesceMaxBatch = time.Hour, 4 })
	release := holdSlots(t, c, s)
	defer release()
	// With every slot busy and an hour's linger, only a full batch goes out.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	pts := make([][]byte, 8)
	for i := range 8 {
		wg.Go(func() {
			ct := []byte{byte('a' + i)}
			if i == 5 {
				ct = []byte("bad")
			}
			pts[i], errs[i] = c.Decrypt(bounded(t), "k", ct, nil)
		})
	}
	wg.Wait()
	for i := range 8 {
		if i == 5 {
			if status.Code(errs[i]) != codes.InvalidArgument || pts[i] != nil {
				t.Errorf("the refused item: %q, %v; want its own INVALID_ARGUMENT", pts[i], errs[i])
			}
			continue
		}
		if errs[i] != nil || string(pts[i]) != "pt:"+string(rune('a'+i)) {
			t.Errorf("call %d got %q, %v", i, pts[i], errs[i])
		}
	}
	if _, batches := s.stats(); len(batches) != 2 || batches[0] != 4 || batches[1] != 4 {
		t.Fatalf("batches %v, want two full batches of 4", batches)
	}
}

func TestCoalescedDecryptWaitsNoLongerThanTheLinger(t *testing.T) {
	c, s := startDecryptServer(t, func(cfg *Config) { cfg.CoalesceLinger = time.Millisecond })
	release := holdSlots(t, c, s)
	defer release()
	// The slots stay busy throughout: only the linger can send these.
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			if pt, err := c.Decrypt(bounded(t), "k", []byte{byte('x' + i)}, nil); err != nil || len(pt) != 4 {
				t.Errorf("decrypt: %q, %v", pt, err)
			}
		})
	}
	wg.Wait()
	if _, batches := s.stats(); len(batches) == 0 {
		t.Fatal("no batch was sent while the slots were busy")
	}
}

func TestCoalescedDecryptReturnsWhenItsCallerGivesUp(t *testing.T) {
	c, s := startDecryptServer(t, func(cfg *Config) { cfg.CoalesceLinger = time.Hour })
	release := holdSlots(t, c, s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Decrypt(ctx, "k", []byte("a"), nil)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled coalesced call returned %v", err)
	}
	release()
	// The batch it left behind is still sent once a slot frees, and the
	// client keeps working.
	if pt, err := c.Decrypt(bounded(t), "k", []byte("b"), nil); err != nil || string(pt) != "pt:b" {
		t.Fatalf("decrypt after a cancelled call: %q, %v", pt, err)
	}
}

func TestDecryptWithOutgoingMetadataIsNeverCoalesced(t *testing.T) {
	c, s := startDecryptServer(t, func(cfg *Config) { cfg.CoalesceLinger = time.Hour })
	release := holdSlots(t, c, s)
	defer release()
	ctx := metadata.AppendToOutgoingContext(bounded(t), "x-request-id", "r1")
	if pt, err := c.Decrypt(ctx, "k", []byte("m"), nil); err != nil || string(pt) != "pt:m" {
		t.Fatalf("decrypt with metadata: %q, %v", pt, err)
	}
	if _, batches := s.stats(); len(batches) != 0 {
		t.Fatalf("a call with metadata went into a batch: %v", batches)
	}
}
