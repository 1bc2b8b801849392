package keys

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func pairs(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%03d", i)] = "v"
	}
	return m
}

func TestValidateContextEnforcesLimits(t *testing.T) {
	tests := []struct {
		name string
		ctx  map[string]string
		ok   bool
	}{
		{"nil", nil, true},
		{"empty", map[string]string{}, true},
		{"empty value", map[string]string{"k": ""}, true},
		{"64 pairs", pairs(MaxContextPairs), true},
		{"65 pairs", pairs(MaxContextPairs + 1), false},
		{"empty key", map[string]string{"": "v"}, false},
		{"128-byte key", map[string]string{strings.Repeat("k", 128): "v"}, true},
		{"129-byte key", map[string]string{strings.Repeat("k", 129): "v"}, false},
		{"1024-byte value", map[string]string{"k": strings.Repeat("v", 1024)}, true},
		{"1025-byte value", map[string]string{"k": strings.Repeat("v", 1025)}, false},
		{"multi-byte utf-8", map[string]string{"clé": "värde ✓"}, true},
		{"invalid utf-8 key", map[string]string{"k\xff": "v"}, false},
		{"invalid utf-8 value", map[string]string{"k": "\xc3"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateContext(tt.ctx)
			if tt.ok && err != nil {
				t.Fatalf("valid context refused: %v", err)
			}
			if !tt.ok && (!errors.Is(err, ErrInvalidContext) || !errors.Is(err, ErrInvalidArgument)) {
				t.Fatalf("err = %v, want ErrInvalidContext", err)
			}
			if _, cerr := CanonicalContext(tt.ctx); (cerr == nil) != tt.ok {
				t.Fatalf("CanonicalContext err = %v, want ok=%v", cerr, tt.ok)
			}
			if _, derr := LegacyContextDigest(tt.ctx); (derr == nil) != tt.ok {
				t.Fatalf("ContextDigest err = %v, want ok=%v", derr, tt.ok)
			}
		})
	}
}

func TestContextErrorsDoNotRevealContents(t *testing.T) {
	secret := "PATIENT-RECORD-4711"
	for _, ctx := range []map[string]string{
		{"a": secret + strings.Repeat("x", 1024)},
		{secret + strings.Repeat("x", 128): "v"},
		{"a": secret + "\xff"},
	} {
		err := ValidateContext(ctx)
		if err == nil {
			t.Fatal("invalid context accepted")
		}
		if strings.Contains(err.Error(), "PATIENT") {
			t.Fatalf("error reveals context contents: %v", err)
		}
	}
}

func TestCanonicalContextIsIndependentOfInsertionOrderAndNil(t *testing.T) {
	a := map[string]string{}
	b := map[string]string{}
	keys := []string{"zeta", "alpha", "Beta", "é", "a", "ab"}
	for i, k := range keys {
		a[k] = fmt.Sprint(i)
	}
	for i := len(keys) - 1; i >= 0; i-- {
		b[keys[i]] = fmt.Sprint(i)
	}
	ea, _ := CanonicalContext(a)
	eb, _ := CanonicalContext(b)
	if !bytes.Equal(ea, eb) {
		t.Fatalf("same context, different encodings:\n%x\n%x", ea, eb)
	}
	en, _ := CanonicalContext(nil)
	ee, _ := CanonicalContext(map[string]string{})
	if !bytes.Equal(en, ee) || !bytes.Equal(en, []byte{0, 0, 0, 0}) {
		t.Fatalf("nil encodes as %x, empty as %x; want both 00000000", en, ee)
	}
}

func TestDistinctContextsHaveDistinctDigests(t *testing.T) {
	// Each group lists contexts that a naive concatenation would confuse.
	groups := [][]map[string]string{
		{{"a": "bc"}, {"ab": "c"}, {"abc": ""}},
		{{"a": "", "b": ""}, {"a": "b"}, {"ab": ""}},
		{nil, {"a": ""}},
		{{"k": "v=1,x=2"}, {"k": "v=1", "x": "2"}},
	}
	for _, g := range groups {
		seen := map[string]map[string]string{}
		for _, ctx := range g {
			d, err := LegacyContextDigest(ctx)
			if err != nil {
				t.Fatal(err)
			}
			enc, _ := CanonicalContext(ctx)
			if want := sha256.Sum256(enc); !bytes.Equal(d, want[:]) {
				t.Fatalf("digest of %v is not SHA-256 of its canonical encoding", ctx)
			}
			if prev, dup := seen[string(d)]; dup {
				t.Fatalf("%v and %v share a digest", prev, ctx)
			}
			seen[string(d)] = ctx
		}
	}
}

func TestContextDigestIsKeyedAndInjective(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	d1, err := NewContextDigester(k1)
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := NewContextDigester(k2)
	ctx := map[string]string{"tenant": "acme"}
	if bytes.Equal(d1.Digest(ctx), d2.Digest(ctx)) {
		t.Fatal("two keys give the same digest: it is not keyed")
	}
	legacy, _ := LegacyContextDigest(ctx)
	if bytes.Equal(d1.Digest(ctx), legacy) {
		t.Fatal("keyed digest equals the unkeyed SHA-256: a guess could be confirmed offline")
	}
	if !bytes.Equal(d1.Digest(nil), d1.Digest(map[string]string{})) {
		t.Fatal("nil and empty contexts differ")
	}
	if bytes.Equal(d1.Digest(map[string]string{"a": "bc"}), d1.Digest(map[string]string{"ab": "c"})) {
		t.Fatal("digest is not injective")
	}
	if _, err := NewContextDigester(k1[:16]); err == nil {
		t.Fatal("a 16-byte key was accepted")
	}
}

// The digester reuses HMAC states across calls and goroutines: every digest
// must still be HMAC-SHA256(key, domain || canonical context), whatever the
// state was last used for.
func TestContextDigestWithReusedStatesIsTheHMAC(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	d, err := NewContextDigester(key)
	if err != nil {
		t.Fatal(err)
	}
	want := func(ctx map[string]string) []byte {
		enc, err := CanonicalContext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := hmac.New(sha256.New, key)
		m.Write([]byte(contextDigestDomain))
		m.Write(enc)
		return m.Sum(nil)
	}
	ctxs := []map[string]string{nil, {"tenant": "acme"}, {"a": strings.Repeat("v", 1000), "b": "w"}, {"conversation": "7731"}}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 200 {
				c := ctxs[(w+i)%len(ctxs)]
				if got := d.Digest(c); !bytes.Equal(got, want(c)) {
					t.Errorf("digest of %v = %x, want the HMAC %x", c, got, want(c))
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestContextEncodingOfASmallContextDoesNotAllocate(t *testing.T) {
	ctx := map[string]string{"tenant": "acme", "conversation": "7731"}
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() {
		if err := ValidateContext(ctx); err != nil {
			t.Fatal(err)
		}
		buf = appendContext(buf[:0], ctx)
	}); n != 0 {
		t.Fatalf("validating and encoding a 2-pair context allocates %.0f times", n)
	}
}
