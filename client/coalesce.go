package client

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// Defaults of the Decrypt coalescing knobs (Config.CoalesceDecrypts).
const (
	DefaultCoalesceLinger   = 500 * time.Microsecond
	DefaultCoalesceMaxBatch = 100 // custodyd's default limits.max_batch
)

// coalesceInFlight is how many coalesced requests may be on the wire before
// new calls wait (up to the linger) to be gathered: with fewer in flight, a
// call goes out at once, so a caller alone never waits.
const coalesceInFlight = 2

// coalescer gathers concurrent Decrypt calls into BatchDecrypt requests.
//
// A call made while fewer than coalesceInFlight requests are in flight is
// sent at once (as a plain Decrypt). Otherwise it joins the open batch,
// which is sent when it holds maxBatch calls, when a request in flight
// completes, or when its first call has waited linger, whichever comes
// first. So the linger bounds the extra wait under load, and a caller alone
// pays nothing.
type coalescer struct {
	crypto   custodyv1.CryptoServiceClient
	linger   time.Duration
	maxBatch int

	mu       sync.Mutex
	open     *decryptBatch
	inflight int
}

// decryptBatch is one BatchDecrypt being gathered or in flight.
type decryptBatch struct {
	items []*custodyv1.DecryptRequest
	// deadline is the latest of the callers' deadlines (a batch must not
	// be cut short for a caller who can wait longer); none if any caller
	// has none.
	deadline   time.Time
	noDeadline bool
	timer      *time.Timer
	done       chan struct{} // closed when results are set

	mu        sync.Mutex // guards results and abandoned
	results   []decryptResult
	abandoned []bool
}

type decryptResult struct {
	resp *custodyv1.DecryptResponse
	err  error
}

func newCoalescer(crypto custodyv1.CryptoServiceClient, linger time.Duration, maxBatch int) *coalescer {
	return &coalescer{crypto: crypto, linger: linger, maxBatch: maxBatch}
}

// coalescible reports whether a call may share a request with others: not
// when its context carries something a shared request would drop (outgoing
// metadata, retries turned off).
func coalescible(ctx context.Context) bool {
	if _, ok := metadata.FromOutgoingContext(ctx); ok {
		return false
	}
	return !retriesDisabled(ctx)
}

func (co *coalescer) decrypt(ctx context.Context, req *custodyv1.DecryptRequest) (*custodyv1.DecryptResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	co.mu.Lock()
	if co.open == nil && co.inflight < coalesceInFlight {
		co.inflight++
		co.mu.Unlock()
		resp, err := co.crypto.Decrypt(ctx, req)
		co.mu.Lock()
		co.inflight--
		co.sendIfIdleLocked()
		co.mu.Unlock()
		return resp, err
	}
	b := co.open
	if b == nil {
		b = &decryptBatch{done: make(chan struct{})}
		co.open = b
		b.timer = time.AfterFunc(co.linger, func() {
			co.mu.Lock()
			if co.open == b {
				co.sendLocked()
			}
			co.mu.Unlock()
		})
	}
	i := len(b.items)
	b.items = append(b.items, req)
	b.mu.Lock()
	b.abandoned = append(b.abandoned, false)
	b.mu.Unlock()
	if dl, ok := ctx.Deadline(); !ok {
		b.noDeadline = true
	} else if dl.After(b.deadline) {
		b.deadline = dl
	}
	if len(b.items) >= co.maxBatch {
		co.sendLocked()
	}
	co.mu.Unlock()

	select {
	case <-b.done:
		r := b.results[i]
		return r.resp, r.err
	case <-ctx.Done():
		// The request goes on without this caller (it is audited like any
		// request whose caller gave up); its plaintext is not kept.
		b.mu.Lock()
		b.abandoned[i] = true
		if b.results != nil {
			b.results[i].forget()
		}
		b.mu.Unlock()
		return nil, ctx.Err()
	}
}

// sendLocked sends the open batch. Called with co.mu held.
func (co *coalescer) sendLocked() {
	b := co.open
	co.open = nil
	b.timer.Stop()
	co.inflight++
	go co.send(b)
}

// sendIfIdleLocked sends the open batch once a request in flight has
// completed: there is nothing left to wait for. Called with co.mu held.
func (co *coalescer) sendIfIdleLocked() {
	if co.open != nil && co.inflight < coalesceInFlight {
		co.sendLocked()
	}
}

func (co *coalescer) send(b *decryptBatch) {
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if !b.noDeadline {
		ctx, cancel = context.WithDeadline(ctx, b.deadline)
	}
	results := make([]decryptResult, len(b.items))
	if len(b.items) == 1 {
		resp, err := co.crypto.Decrypt(ctx, b.items[0])
		results[0] = decryptResult{resp, err}
	} else {
		resp, err := co.crypto.BatchDecrypt(ctx, &custodyv1.BatchDecryptRequest{Items: b.items})
		for i := range results {
			results[i] = itemResult(resp, err, i)
		}
	}
	cancel()
	b.mu.Lock()
	for i := range results {
		if b.abandoned[i] {
			results[i].forget()
		}
	}
	b.results = results
	b.mu.Unlock()
	close(b.done)

	co.mu.Lock()
	co.inflight--
	co.sendIfIdleLocked()
	co.mu.Unlock()
}

// itemResult is item i of a BatchDecrypt answer as the Decrypt call that
// made it would have had it: the call's error when the whole request
// failed, the item's own status otherwise.
func itemResult(resp *custodyv1.BatchDecryptResponse, err error, i int) decryptResult {
	if err != nil {
		return decryptResult{err: err}
	}
	rs := resp.GetResults()
	if i >= len(rs) {
		return decryptResult{err: status.Error(codes.Internal, "custodyd answered a batch with fewer results than items")}
	}
	if ie := rs[i].GetError(); ie != nil {
		st := status.New(codes.Code(ie.GetCode()), ie.GetMessage())
		if st.Code() == codes.ResourceExhausted {
			return decryptResult{err: &BudgetError{Status: st}} // a batch item carries no retry hint
		}
		return decryptResult{err: st.Err()}
	}
	return decryptResult{resp: rs[i].GetResponse()}
}

// forget zeroes a result nobody will read.
func (r *decryptResult) forget() {
	if r.resp != nil {
		clear(r.resp.Plaintext)
		r.resp = nil
	}
}
