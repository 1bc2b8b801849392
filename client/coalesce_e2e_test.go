package client_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	"github.com/custodyhq/custody/client"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/testenv"
)

// Against a real custodyd: concurrent coalesced Decrypts each get their own
// plaintext or their own refusal, and every one is on the audit record as
// an item of a batch.
func TestEndToEndCoalescedDecryptsAreServedAndAuditedOneByOne(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	plain := dialAs(t, e, "relay")
	cp := e.Cert["relay"]
	c, err := client.Dial(context.Background(), client.Config{
		Addr: e.Addr, CAFile: e.CAFile, CertFile: cp.CertFile, KeyFile: cp.KeyFile,
		ServerName: "localhost", Timeout: 30 * time.Second,
		CoalesceDecrypts: true, CoalesceLinger: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	const n = 48
	cts := make([][]byte, n)
	for i := range cts {
		if cts[i], err = plain.Encrypt(ctx, devKey, []byte(fmt.Sprintf("message %d", i)), map[string]string{"m": fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// What a single Decrypt answers for the wrong context, to compare.
	_, wantErr := plain.Decrypt(ctx, devKey, cts[0], map[string]string{"m": "wrong"})
	if wantErr == nil {
		t.Fatal("a decrypt under the wrong context succeeded")
	}
	before, _ := e.D.Audit.Head()

	var wg sync.WaitGroup
	for round := range 3 {
		for i := range n {
			wg.Go(func() {
				encCtx := map[string]string{"m": fmt.Sprint(i)}
				if i%7 == 3 {
					encCtx["m"] = "wrong"
					_, err := c.Decrypt(ctx, devKey, cts[i], encCtx)
					if status.Code(err) != status.Code(wantErr) {
						t.Errorf("round %d: coalesced decrypt under the wrong context: %v; a single Decrypt says %v", round, err, wantErr)
					}
					return
				}
				pt, err := c.Decrypt(ctx, devKey, cts[i], encCtx)
				if err != nil || string(pt) != fmt.Sprintf("message %d", i) {
					t.Errorf("round %d: call %d got %q, %v", round, i, pt, err)
				}
			})
		}
		wg.Wait()
	}
	// Every call is on the record, each item with its outcome; some went
	// in batches.
	items, batched, denied := 0, 0, 0
	err = e.D.Audit.Read(ctx, audit.Filter{AfterSeq: before}, func(r audit.Record) error {
		switch {
		case r.Method == "Decrypt":
			items++
		case strings.HasPrefix(r.Method, "BatchDecrypt["):
			items++
			batched++
		default:
			return nil
		}
		if r.Outcome != audit.OutcomeOK {
			denied++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantDenied := 3 * len([]int{3, 10, 17, 24, 31, 38, 45})
	if items != 3*n || denied != wantDenied {
		t.Fatalf("audit log: %d decrypt records (%d refused), want %d (%d refused)", items, denied, 3*n, wantDenied)
	}
	if batched == 0 {
		t.Fatal("no call was coalesced into a BatchDecrypt")
	}
	t.Logf("%d calls: %d served as batch items", items, batched)
}
