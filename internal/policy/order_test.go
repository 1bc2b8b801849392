package policy

import (
	"errors"
	"testing"
	"time"
)

func testOrder() Order {
	return Order{
		CaseRef:      "case-2026-0042",
		Key:          keyMsgs,
		ContextMatch: map[string]string{"tenant": "acme", "conversation": "c-7781"},
		Recipient:    "spiffe://corp/investigator",
		MaxUses:      2,
		NotAfter:     t0.Add(72 * time.Hour),
	}
}

func TestOrderValidateRefusesUntargetedOrders(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Order)
	}{
		{"no context match", func(o *Order) { o.ContextMatch = nil }},
		{"empty context match", func(o *Order) { o.ContextMatch = map[string]string{} }},
		{"wildcard value", func(o *Order) { o.ContextMatch["conversation"] = "*" }},
		{"empty value", func(o *Order) { o.ContextMatch["conversation"] = "" }},
		{"blank value", func(o *Order) { o.ContextMatch["conversation"] = "  " }},
		{"empty match key", func(o *Order) { o.ContextMatch[""] = "x" }},
		{"wildcard key name", func(o *Order) { o.Key = "*" }},
		{"empty key name", func(o *Order) { o.Key = "" }},
		{"no case reference", func(o *Order) { o.CaseRef = "" }},
		{"no recipient", func(o *Order) { o.Recipient = "" }},
		{"zero uses", func(o *Order) { o.MaxUses = 0 }},
		{"bulk uses", func(o *Order) { o.MaxUses = MaxOrderUses + 1 }},
		{"no deadline", func(o *Order) { o.NotAfter = time.Time{} }},
		{"overspent", func(o *Order) { o.Used = 3 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOrder()
			tt.mutate(&o)
			if err := o.Validate(); !errors.Is(err, ErrInvalidOrder) {
				t.Fatalf("Validate = %v, want ErrInvalidOrder", err)
			}
			if err := o.Use(o.Recipient, o.Key, map[string]string{"tenant": "acme", "conversation": "c-7781"}, t0); err == nil {
				t.Fatal("an invalid order was usable")
			}
		})
	}
	if err := testOrder().Validate(); err != nil {
		t.Fatalf("valid order refused: %v", err)
	}
}

func TestOrderUseCountsDownToExhaustion(t *testing.T) {
	o := testOrder()
	ctx := map[string]string{"tenant": "acme", "conversation": "c-7781", "message": "m-1"}
	for i := range 2 {
		if err := o.Use(o.Recipient, keyMsgs, ctx, t0); err != nil {
			t.Fatalf("use %d: %v", i+1, err)
		}
	}
	if o.Remaining() != 0 || o.Used != 2 {
		t.Fatalf("after 2 uses: used=%d remaining=%d", o.Used, o.Remaining())
	}
	if err := o.Use(o.Recipient, keyMsgs, ctx, t0); !errors.Is(err, ErrOrderExhausted) {
		t.Fatalf("third use: %v, want ErrOrderExhausted", err)
	}
}

func TestOrderUseRefusalsSpendNothing(t *testing.T) {
	match := map[string]string{"tenant": "acme", "conversation": "c-7781"}
	tests := []struct {
		name      string
		recipient string
		key       string
		ctx       map[string]string
		now       time.Time
		want      error
	}{
		{"other conversation", "spiffe://corp/investigator", keyMsgs, map[string]string{"tenant": "acme", "conversation": "c-1"}, t0, ErrContextMismatch},
		{"context missing a pair", "spiffe://corp/investigator", keyMsgs, map[string]string{"tenant": "acme"}, t0, ErrContextMismatch},
		{"no context", "spiffe://corp/investigator", keyMsgs, nil, t0, ErrContextMismatch},
		{"other recipient", relayA, keyMsgs, match, t0, ErrNotGranted},
		{"other key", "spiffe://corp/investigator", "payroll", match, t0, ErrNotGranted},
		{"at deadline", "spiffe://corp/investigator", keyMsgs, match, t0.Add(72 * time.Hour), ErrOrderExpired},
		{"after deadline", "spiffe://corp/investigator", keyMsgs, match, t0.Add(73 * time.Hour), ErrOrderExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOrder()
			if err := o.Use(tt.recipient, tt.key, tt.ctx, tt.now); !errors.Is(err, tt.want) {
				t.Fatalf("Use = %v, want %v", err, tt.want)
			}
			if o.Used != 0 {
				t.Fatalf("refused use was counted: used=%d", o.Used)
			}
		})
	}
}
