package audit

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestTransparencyReportCountsAndSignature(t *testing.T) {
	dir, key := t.TempDir(), newKey(t)
	l := openLog(t, dir, key, testOptions())
	t0 := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	add := func(min int, id, method, k string, out Outcome, caseRef string) {
		t.Helper()
		_, err := l.Append(context.Background(), Record{Time: t0.Add(time.Duration(min) * time.Minute),
			Identity: id, Role: "relay", Method: method, Key: k, Outcome: out, Code: "OK", CaseRef: caseRef})
		if err != nil {
			t.Fatal(err)
		}
	}
	const dec, unwrap, enc = "/custody.v1.CryptoService/Decrypt", "/custody.v1.CryptoService/Unwrap", "/custody.v1.CryptoService/Encrypt"
	add(0, "relay-a", dec, "mail", OutcomeOK, "")                // before the window
	add(10, "relay-a", dec, "mail", OutcomeOK, "")               // 2
	add(11, "relay-a", unwrap, "mail", OutcomeOK, "")            // 3
	add(12, "relay-b", dec, "chat", OutcomeDenied, "")           // 4
	add(13, "relay-b", enc, "chat", OutcomeOK, "")               // 5, not a reported method
	add(14, "officer-x", dec, "chat", OutcomeOK, "CASE-2026-17") // 6, disclosure
	add(15, "officer-x", dec, "chat", OutcomeDenied, "CASE-2026-17")
	add(60, "relay-a", dec, "mail", OutcomeOK, "") // after the window

	methods := []string{dec, unwrap}
	rep, err := BuildReport(dir, t0.Add(5*time.Minute), t0.Add(30*time.Minute), methods, func(m string) bool { return slices.Contains(methods, m) })
	if err != nil {
		t.Fatal(err)
	}
	if rep.FirstSeq != 2 || rep.LastSeq != 7 || rep.Records != 6 || rep.Operations != 3 || rep.Disclosures != 1 {
		t.Fatalf("report = %+v", rep)
	}
	var head []byte
	l.Read(context.Background(), Filter{AfterSeq: 6}, func(r Record) error {
		if r.Seq == 7 {
			head = r.Hash
		}
		return nil
	})
	if Digest(head).String() != rep.Head.String() {
		t.Fatalf("head %x, want hash of record 7 %x", rep.Head, head)
	}
	wantKeys := []UseCount{{Name: "chat", Operations: 1, Denied: 2, Disclosures: 1}, {Name: "mail", Operations: 2}}
	wantIDs := []UseCount{{Name: "officer-x", Operations: 1, Denied: 1, Disclosures: 1}, {Name: "relay-a", Operations: 2}, {Name: "relay-b", Denied: 1}}
	if !equalCounts(rep.Keys, wantKeys) || !equalCounts(rep.Identities, wantIDs) {
		t.Fatalf("keys %+v ids %+v", rep.Keys, rep.Identities)
	}
	if len(rep.Cases) != 1 || rep.Cases[0] != (CaseCount{CaseRef: "CASE-2026-17", Uses: 1}) {
		t.Fatalf("cases %+v", rep.Cases)
	}

	if err := rep.SignReport(key); err != nil {
		t.Fatal(err)
	}
	// Round trip through JSON, as a published report would be.
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var published TransparencyReport
	if err := json.Unmarshal(b, &published); err != nil {
		t.Fatal(err)
	}
	if err := published.VerifyReport(&key.PublicKey); err != nil {
		t.Fatalf("VerifyReport of published report: %v", err)
	}
	published.Keys[1].Operations = 1 // understate the use of "mail"
	if err := published.VerifyReport(&key.PublicKey); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("VerifyReport of altered report = %v, want ErrBadSignature", err)
	}
}

func equalCounts(a, b []UseCount) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
