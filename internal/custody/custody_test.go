package custody

import (
	"errors"
	"testing"
)

func safe() Attrs {
	return Attrs{Token: true, Private: true, Sensitive: true, AlwaysSensitive: true, NeverExtractable: true, Local: true}
}

func TestCheckRequiresEveryPropertyAndWaivesOnlyTheWaivable(t *testing.T) {
	if err := safe().Check(); err != nil || !safe().Verified() {
		t.Fatalf("a key in custody: %v", err)
	}
	for name, mutate := range map[string]func(*Attrs){
		Token: func(a *Attrs) { a.Token = false }, Sensitive: func(a *Attrs) { a.Sensitive = false },
		AlwaysSensitive: func(a *Attrs) { a.AlwaysSensitive = false }, Extractable: func(a *Attrs) { a.Extractable = true },
		NeverExtractable: func(a *Attrs) { a.NeverExtractable = false }, Private: func(a *Attrs) { a.Private = false },
		Local: func(a *Attrs) { a.Local = false }, Modifiable: func(a *Attrs) { a.Modifiable = true },
	} {
		a := safe()
		mutate(&a)
		if err := a.Check(); !errors.Is(err, ErrNotInCustody) {
			t.Errorf("%s broken: %v", name, err)
		}
		a.Unverified = []string{name}
		waivable := name == Private || name == Local || name == Modifiable
		if (a.Check() == nil) != waivable {
			t.Errorf("%s listed as unverified: Check = %v, want waived %t", name, a.Check(), waivable)
		}
		if a.Verified() {
			t.Errorf("%s unverified, yet Verified", name)
		}
	}
	a := safe()
	a.Unverified = []string{ExtractableEnforced}
	if a.Safe() {
		t.Fatal("a token that lets keys out is in custody")
	}
}

func TestATokenThatLetsKeysOutIsRecordableNeverSafe(t *testing.T) {
	a := safe()
	a.Unverified = []string{ExtractableEnforced}
	if a.Recordable() != nil || a.Safe() {
		t.Fatalf("recordable %v, safe %t", a.Recordable(), a.Safe())
	}
	a.Extractable = true
	if a.Recordable() == nil {
		t.Fatal("an extractable key is recordable")
	}
}
