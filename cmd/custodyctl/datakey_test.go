package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/testenv"
)

func TestCLIStoredDataKeyStoreFetchListDelete(t *testing.T) {
	e := testenv.Start(t, testenv.Settings{})
	e.D.Server.SetDataKeyStore(e.D.Store) // until the daemon wires it itself
	relay := as(e, "relay")
	ctxFlag := []string{"--key", "demo", "--context", "tenant=acme"}

	for i := range 3 {
		inv := runCLI(t, nil, append(append(relay, "datakey", "store", "--id", fmt.Sprintf("conv:%d", i)), ctxFlag...)...)
		if inv.code != 0 || !strings.Contains(inv.stdout, fmt.Sprintf("id: conv:%d", i)) {
			t.Fatalf("store: %+v", inv)
		}
	}
	fetch := func() []byte {
		inv := runCLI(t, nil, append(append(relay, "--output", "json", "datakey", "fetch", "--id", "conv:1"), ctxFlag...)...)
		if inv.code != 0 {
			t.Fatalf("fetch: %+v", inv)
		}
		var r struct{ Plaintext string }
		if err := json.Unmarshal([]byte(inv.stdout), &r); err != nil {
			t.Fatal(err)
		}
		k, err := base64.StdEncoding.DecodeString(r.Plaintext)
		if err != nil || len(k) != 32 {
			t.Fatalf("fetched key: %d bytes, %v", len(k), err)
		}
		return k
	}
	if a, b := fetch(), fetch(); string(a) != string(b) {
		t.Fatal("two fetches of one id gave different keys")
	}
	// Under another context the id is not there (ids are scoped by
	// context), said in one line.
	assertOneErrorLine(t, runCLI(t, nil, append(relay, "datakey", "fetch", "--key", "demo", "--id", "conv:1", "--context", "tenant=evil")...), 1, "NotFound")

	// The operator lists ids (one page of 2, then the rest with --all).
	op := as(e, "operator")
	page := runCLI(t, nil, append(op, "datakey", "list", "--key", "demo", "--page-size", "2")...)
	if page.code != 0 || !strings.HasPrefix(page.stdout, "conv:0\nconv:1\nnext_page_token: ") {
		t.Fatalf("list page: %+v", page)
	}
	all := runCLI(t, nil, append(op, "datakey", "list", "--key", "demo", "--page-size", "2", "--all")...)
	if got := strings.Fields(all.stdout); all.code != 0 || !slices.Equal(got, []string{"conv:0", "conv:1", "conv:2"}) {
		t.Fatalf("list --all: %+v", all)
	}

	if inv := runCLI(t, nil, append(append(relay, "datakey", "delete", "--id", "conv:1"), ctxFlag...)...); inv.code != 0 {
		t.Fatalf("delete: %+v", inv)
	}
	assertOneErrorLine(t, runCLI(t, nil, append(append(relay, "datakey", "fetch", "--id", "conv:1"), ctxFlag...)...), 1, "NotFound")
	// A bad id is refused by custodyd; a missing one before any call.
	assertOneErrorLine(t, runCLI(t, nil, append(append(relay, "datakey", "store", "--id", "a/b"), ctxFlag...)...), 1, "InvalidArgument")
	assertOneErrorLine(t, runCLI(t, nil, append(append(relay, "datakey", "store"), ctxFlag...)...), exitUsage, local)
}
