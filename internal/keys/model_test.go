package keys

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/custodyhq/custody/internal/custody"
)

var (
	// t0 carries a monotonic reading and a non-UTC zone on purpose: the
	// model must normalise both so that keys survive JSON unchanged.
	t0     = time.Now().In(time.FixedZone("UTC+2", 2*3600))
	day    = 24 * time.Hour
	window = DestroyWindow{Min: day, Max: 30 * day}
	safe   = Attrs{custody.Attrs{Token: true, Private: true, NeverExtractable: true, AlwaysSensitive: true, Local: true, Sensitive: true}}
)

func hsmID(n int) []byte { return []byte{0xc0, byte(n)} }

// fixture returns an encrypt key with five versions:
// v1 destroyed, v2 destroy-scheduled (due t0+2d), v3 disabled, v4 enabled, v5 enabled primary.
func fixture(t *testing.T) *Key {
	t.Helper()
	return fixtureFor(t, PurposeEncryptAES256GCM)
}

func fixtureFor(t *testing.T, p Purpose) *Key {
	t.Helper()
	k, err := NewKey(repeat(0x11, KeyIDLen), "relay-master", p, "test key", t0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ {
		if _, err := k.AddVersion(hsmID(i), "custody/relay-master/v"+string(rune('0'+i)), safe, t0.Add(time.Duration(i)*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(k.ScheduleDestroy(1, t0, day, window))
	must(k.MarkDestroyed(1, t0.Add(day)))
	must(k.ScheduleDestroy(2, t0, 2*day, window))
	must(k.Disable(3))
	must(k.Validate())
	return k
}

var preciseErrors = []error{ErrVersionNotFound, ErrVersionDisabled, ErrVersionTooOld, ErrVersionDestroyed, ErrWrongPurpose, ErrInvalidName, ErrInvalidContext, ErrMalformed}

// checkErr asserts err matches want and none of the other precise sentinels.
func checkErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
	for _, other := range preciseErrors {
		if other != want && errors.Is(err, other) && !errors.Is(want, other) {
			t.Fatalf("err = %v also matches %v", err, other)
		}
	}
}

type transition struct {
	name    string
	setup   func(*Key) // optional, before the snapshot
	op      func(*Key) error
	wantErr error                  // nil: the transition must succeed
	check   func(*testing.T, *Key) // on success
}

// runTransitions applies each transition to a fresh fixture. A refused
// transition must leave the key deep-equal to before; an accepted one must
// leave a key that still passes Validate.
func runTransitions(t *testing.T, tests []transition) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := fixture(t)
			if tt.setup != nil {
				tt.setup(k)
			}
			before := k.Clone()
			err := tt.op(k)
			if tt.wantErr != nil {
				checkErr(t, err, tt.wantErr)
				if !reflect.DeepEqual(k, before) {
					t.Fatalf("refused transition changed the key:\n before %+v\n after  %+v", before, k)
				}
				return
			}
			if err != nil {
				t.Fatalf("transition refused: %v", err)
			}
			if err := k.Validate(); err != nil {
				t.Fatalf("key invalid after transition: %v", err)
			}
			if tt.check != nil {
				tt.check(t, k)
			}
		})
	}
}

func wantState(n uint32, s State) func(*testing.T, *Key) {
	return func(t *testing.T, k *Key) {
		t.Helper()
		if got := k.Versions[n-1].State; got != s {
			t.Fatalf("version %d is %s, want %s", n, got, s)
		}
	}
}

func unchanged(t *testing.T, k *Key) {
	t.Helper()
	if !reflect.DeepEqual(k, fixture(t)) {
		t.Fatal("no-op transition changed the key")
	}
}

func TestAddVersion(t *testing.T) {
	add := func(id []byte, label string, a Attrs, now time.Time) func(*Key) error {
		return func(k *Key) error { _, err := k.AddVersion(id, label, a, now); return err }
	}
	with := func(edit func(*Attrs)) Attrs { a := safe; edit(&a); return a }
	runTransitions(t, []transition{
		{name: "becomes the enabled primary", op: add(hsmID(6), "v6", safe, t0), check: func(t *testing.T, k *Key) {
			v, ok := k.Version(6)
			if !ok || k.Primary != 6 || v.State != StateEnabled || !bytes.Equal(v.HSMID, hsmID(6)) || !reflect.DeepEqual(v.Attrs, safe) {
				t.Fatalf("after AddVersion: primary %d, version %+v", k.Primary, v)
			}
			if got, err := k.ForEncrypt(); err != nil || got.Number != 6 {
				t.Fatalf("ForEncrypt = %d, %v; want version 6", got.Number, err)
			}
		}},
		{name: "refuses an extractable key", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.Extractable = true }), t0), wantErr: ErrInvalidArgument},
		{name: "refuses a non-sensitive key", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.Sensitive = false }), t0), wantErr: ErrInvalidArgument},
		{name: "refuses a key that was once extractable", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.NeverExtractable = false }), t0), wantErr: ErrInvalidArgument},
		{name: "refuses a key that was once not sensitive", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.AlwaysSensitive = false }), t0), wantErr: ErrInvalidArgument},
		{name: "refuses an imported key", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.Local = false }), t0), wantErr: ErrInvalidArgument},
		{name: "accepts CKA_LOCAL=false only where the record says the token cannot report it", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.Local, a.Unverified = false, []string{"local"} }), t0)},
		{name: "no record of being unverifiable excuses a non-sensitive key", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.Sensitive, a.Unverified = false, []string{"sensitive", "local"} }), t0), wantErr: ErrInvalidArgument},
		{name: "no record of being unverifiable excuses an extractable key", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.Extractable, a.Unverified = true, []string{"extractable"} }), t0), wantErr: ErrInvalidArgument},
		{name: "refuses a session object", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.Token = false }), t0), wantErr: ErrInvalidArgument},
		{name: "refuses a public object", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.Private = false }), t0), wantErr: ErrInvalidArgument},
		{name: "refuses a modifiable key", op: add(hsmID(6), "v6", with(func(a *Attrs) { a.Modifiable = true }), t0), wantErr: ErrInvalidArgument},
		{name: "accepts a key with token, private and modifiable recorded", op: add(hsmID(6), "v6",
			with(func(a *Attrs) { a.Token, a.Private, a.Modifiable = true, true, false }), t0)},
		{name: "refuses an empty hsm id", op: add(nil, "v6", safe, t0), wantErr: ErrInvalidArgument},
		{name: "refuses a 65-byte hsm id", op: add(make([]byte, 65), "v6", safe, t0), wantErr: ErrInvalidArgument},
		{name: "refuses an empty label", op: add(hsmID(6), "", safe, t0), wantErr: ErrInvalidArgument},
		{name: "refuses an hsm id already recorded", op: add(hsmID(1), "v6", safe, t0), wantErr: ErrInvalidArgument},
		{name: "refuses a label already recorded", op: add(hsmID(6), "custody/relay-master/v3", safe, t0), wantErr: ErrInvalidArgument},
		{name: "refuses a zero time", op: add(hsmID(6), "v6", safe, time.Time{}), wantErr: ErrInvalidArgument},
	})
}

func TestEnable(t *testing.T) {
	runTransitions(t, []transition{
		{name: "enables a disabled version", op: func(k *Key) error { return k.Enable(3) }, check: wantState(3, StateEnabled)},
		{name: "enabling an enabled version changes nothing", op: func(k *Key) error { return k.Enable(4) }, check: unchanged},
		{name: "refuses a version scheduled for destruction", op: func(k *Key) error { return k.Enable(2) }, wantErr: ErrFailedPrecondition},
		{name: "refuses a destroyed version", op: func(k *Key) error { return k.Enable(1) }, wantErr: ErrVersionDestroyed},
		{name: "refuses version 0", op: func(k *Key) error { return k.Enable(0) }, wantErr: ErrVersionNotFound},
		{name: "refuses a missing version", op: func(k *Key) error { return k.Enable(9) }, wantErr: ErrVersionNotFound},
	})
}

func TestDisable(t *testing.T) {
	runTransitions(t, []transition{
		{name: "disables an enabled version", op: func(k *Key) error { return k.Disable(4) }, check: wantState(4, StateDisabled)},
		{name: "disabling a disabled version changes nothing", op: func(k *Key) error { return k.Disable(3) }, check: unchanged},
		{name: "refuses the primary version", op: func(k *Key) error { return k.Disable(5) }, wantErr: ErrFailedPrecondition},
		{name: "refuses a version scheduled for destruction", op: func(k *Key) error { return k.Disable(2) }, wantErr: ErrFailedPrecondition},
		{name: "refuses a destroyed version", op: func(k *Key) error { return k.Disable(1) }, wantErr: ErrVersionDestroyed},
		{name: "refuses a missing version", op: func(k *Key) error { return k.Disable(6) }, wantErr: ErrVersionNotFound},
	})
}

func TestSetMinDecrypt(t *testing.T) {
	wantMin := func(n uint32) func(*testing.T, *Key) {
		return func(t *testing.T, k *Key) {
			if k.MinDecrypt != n {
				t.Fatalf("MinDecrypt = %d, want %d", k.MinDecrypt, n)
			}
		}
	}
	runTransitions(t, []transition{
		{name: "raises the minimum", op: func(k *Key) error { return k.SetMinDecrypt(4) }, check: wantMin(4)},
		{name: "accepts the primary version", op: func(k *Key) error { return k.SetMinDecrypt(5) }, check: wantMin(5)},
		{name: "lowers the minimum", setup: func(k *Key) { k.MinDecrypt = 4 }, op: func(k *Key) error { return k.SetMinDecrypt(3) }, check: wantMin(3)},
		{name: "refuses a version above the primary", setup: func(k *Key) { k.Primary = 4 }, op: func(k *Key) error { return k.SetMinDecrypt(5) }, wantErr: ErrFailedPrecondition},
		{name: "refuses a missing version", op: func(k *Key) error { return k.SetMinDecrypt(6) }, wantErr: ErrVersionNotFound},
		{name: "refuses version 0", op: func(k *Key) error { return k.SetMinDecrypt(0) }, wantErr: ErrVersionNotFound},
	})
}

func TestScheduleDestroy(t *testing.T) {
	sched := func(n uint32, now time.Time, wait time.Duration, w DestroyWindow) func(*Key) error {
		return func(k *Key) error { return k.ScheduleDestroy(n, now, wait, w) }
	}
	due := func(n uint32, at time.Time) func(*testing.T, *Key) {
		return func(t *testing.T, k *Key) {
			v := k.Versions[n-1]
			if v.State != StateDestroyScheduled || !v.DestroyAt.Equal(at) {
				t.Fatalf("version %d: %s, due %s; want destroy-scheduled, due %s", n, v.State, v.DestroyAt, at)
			}
		}
	}
	runTransitions(t, []transition{
		{name: "schedules a disabled version at the minimum wait", op: sched(3, t0, day, window), check: due(3, t0.Add(day))},
		{name: "schedules an enabled version at the maximum wait", op: sched(4, t0, 30*day, window), check: due(4, t0.Add(30*day))},
		{name: "refuses the primary version", op: sched(5, t0, day, window), wantErr: ErrFailedPrecondition},
		{name: "refuses a version already scheduled", op: sched(2, t0, day, window), wantErr: ErrFailedPrecondition},
		{name: "refuses a destroyed version", op: sched(1, t0, day, window), wantErr: ErrVersionDestroyed},
		{name: "refuses a missing version", op: sched(9, t0, day, window), wantErr: ErrVersionNotFound},
		{name: "refuses a wait below the minimum", op: sched(3, t0, day-time.Second, window), wantErr: ErrInvalidArgument},
		{name: "refuses a wait above the maximum", op: sched(3, t0, 30*day+time.Second, window), wantErr: ErrInvalidArgument},
		{name: "refuses an inverted window", op: sched(3, t0, day, DestroyWindow{Min: 2 * day, Max: day}), wantErr: ErrInvalidArgument},
		{name: "refuses a negative window", op: sched(3, t0, 0, DestroyWindow{Min: -day, Max: day}), wantErr: ErrInvalidArgument},
		{name: "refuses a zero time", op: sched(3, time.Time{}, day, window), wantErr: ErrInvalidArgument},
	})
}

func TestCancelDestroy(t *testing.T) {
	runTransitions(t, []transition{
		{name: "returns a scheduled version to disabled", op: func(k *Key) error { return k.CancelDestroy(2) }, check: func(t *testing.T, k *Key) {
			if v := k.Versions[1]; v.State != StateDisabled || !v.DestroyAt.IsZero() {
				t.Fatalf("version 2 after cancel: %s, due %s; want disabled, no due time", v.State, v.DestroyAt)
			}
		}},
		{name: "refuses a disabled version", op: func(k *Key) error { return k.CancelDestroy(3) }, wantErr: ErrFailedPrecondition},
		{name: "refuses an enabled version", op: func(k *Key) error { return k.CancelDestroy(4) }, wantErr: ErrFailedPrecondition},
		{name: "refuses a destroyed version", op: func(k *Key) error { return k.CancelDestroy(1) }, wantErr: ErrVersionDestroyed},
		{name: "refuses a missing version", op: func(k *Key) error { return k.CancelDestroy(7) }, wantErr: ErrVersionNotFound},
	})
}

func TestMarkDestroyed(t *testing.T) {
	dueAt := t0.Add(2 * day)
	mark := func(n uint32, now time.Time) func(*Key) error {
		return func(k *Key) error { return k.MarkDestroyed(n, now) }
	}
	destroyedAt := func(at time.Time) func(*testing.T, *Key) {
		return func(t *testing.T, k *Key) {
			v := k.Versions[1]
			if v.State != StateDestroyed || !v.DestroyedAt.Equal(at) || !bytes.Equal(v.HSMID, hsmID(2)) {
				t.Fatalf("version 2: %+v; want destroyed at %s with its hsm id kept", v, at)
			}
		}
	}
	runTransitions(t, []transition{
		{name: "destroys a version exactly when due", op: mark(2, dueAt), check: destroyedAt(dueAt)},
		{name: "destroys a version after it is due", op: mark(2, dueAt.Add(time.Hour)), check: destroyedAt(dueAt.Add(time.Hour))},
		{name: "refuses a version not yet due", op: mark(2, dueAt.Add(-time.Nanosecond)), wantErr: ErrFailedPrecondition},
		{name: "refuses a version not scheduled", op: mark(3, dueAt), wantErr: ErrFailedPrecondition},
		{name: "refuses the primary version", op: mark(5, dueAt), wantErr: ErrFailedPrecondition},
		{name: "refuses a destroyed version", op: mark(1, dueAt), wantErr: ErrVersionDestroyed},
		{name: "refuses a missing version", op: mark(8, dueAt), wantErr: ErrVersionNotFound},
		{name: "refuses a zero time", op: mark(2, time.Time{}), wantErr: ErrInvalidArgument},
	})
}

func TestDueForDestructionListsScheduledVersionsWhoseTimeHasCome(t *testing.T) {
	k := fixture(t)
	if err := k.ScheduleDestroy(4, t0, 3*day, window); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		now  time.Time
		want []uint32
	}{
		{t0, nil},
		{t0.Add(2*day - time.Nanosecond), nil},
		{t0.Add(2 * day), []uint32{2}},
		{t0.Add(3 * day), []uint32{2, 4}},
		{t0.Add(365 * day), []uint32{2, 4}},
	}
	for _, tt := range tests {
		if got := k.DueForDestruction(tt.now); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("DueForDestruction(t0+%s) = %v, want %v", tt.now.Sub(t0), got, tt.want)
		}
	}
}

func TestUseChecks(t *testing.T) {
	type use struct {
		name    string
		purpose Purpose
		setup   func(*Key)
		call    func(*Key) (Version, error)
		want    uint32 // version returned on success
		wantErr error
	}
	enc, mac, sig := PurposeEncryptAES256GCM, PurposeMACHMACSHA256, PurposeSignECDSAP256
	minDecrypt4 := func(k *Key) { k.MinDecrypt = 4 }
	tests := []use{
		{"encrypt uses the primary", enc, nil, (*Key).ForEncrypt, 5, nil},
		{"encrypt refuses a signing key", sig, nil, (*Key).ForEncrypt, 0, ErrWrongPurpose},
		{"encrypt refuses a mac key", mac, nil, (*Key).ForEncrypt, 0, ErrWrongPurpose},
		{"encrypt refuses a key without versions", enc, func(k *Key) { k.Versions, k.Primary = nil, 0 }, (*Key).ForEncrypt, 0, ErrFailedPrecondition},
		{"encrypt refuses a disabled primary", enc, func(k *Key) { k.Versions[4].State = StateDisabled }, (*Key).ForEncrypt, 0, ErrVersionDisabled},
		{"encrypt refuses a destroyed primary", enc, func(k *Key) { k.Versions[4].State = StateDestroyed }, (*Key).ForEncrypt, 0, ErrVersionDestroyed},
		{"decrypt accepts an older enabled version", enc, nil, func(k *Key) (Version, error) { return k.ForDecrypt(4) }, 4, nil},
		{"decrypt accepts the primary", enc, nil, func(k *Key) (Version, error) { return k.ForDecrypt(5) }, 5, nil},
		{"decrypt accepts the minimum version", enc, minDecrypt4, func(k *Key) (Version, error) { return k.ForDecrypt(4) }, 4, nil},
		{"decrypt refuses a disabled version", enc, nil, func(k *Key) (Version, error) { return k.ForDecrypt(3) }, 0, ErrVersionDisabled},
		{"decrypt refuses a version scheduled for destruction", enc, nil, func(k *Key) (Version, error) { return k.ForDecrypt(2) }, 0, ErrVersionDisabled},
		{"decrypt refuses a destroyed version", enc, nil, func(k *Key) (Version, error) { return k.ForDecrypt(1) }, 0, ErrVersionDestroyed},
		{"decrypt refuses a version below the minimum", enc, minDecrypt4, func(k *Key) (Version, error) { k.Versions[2].State = StateEnabled; return k.ForDecrypt(3) }, 0, ErrVersionTooOld},
		{"decrypt refuses a missing version", enc, nil, func(k *Key) (Version, error) { return k.ForDecrypt(6) }, 0, ErrVersionNotFound},
		{"decrypt refuses version 0", enc, nil, func(k *Key) (Version, error) { return k.ForDecrypt(0) }, 0, ErrVersionNotFound},
		{"decrypt refuses a signing key", sig, nil, func(k *Key) (Version, error) { return k.ForDecrypt(5) }, 0, ErrWrongPurpose},
		{"sign uses the primary", sig, nil, (*Key).ForSign, 5, nil},
		{"sign refuses an encrypt key", enc, nil, (*Key).ForSign, 0, ErrWrongPurpose},
		{"sign refuses a mac key", mac, nil, (*Key).ForSign, 0, ErrWrongPurpose},
		{"verify accepts an older enabled version", sig, nil, func(k *Key) (Version, error) { return k.ForVerify(4) }, 4, nil},
		{"verify refuses a disabled version", sig, nil, func(k *Key) (Version, error) { return k.ForVerify(3) }, 0, ErrVersionDisabled},
		{"verify refuses a version below the minimum", sig, minDecrypt4, func(k *Key) (Version, error) { return k.ForVerify(3) }, 0, ErrVersionTooOld},
		{"verify refuses an encrypt key", enc, nil, func(k *Key) (Version, error) { return k.ForVerify(5) }, 0, ErrWrongPurpose},
		{"mac uses the primary", mac, nil, (*Key).ForMAC, 5, nil},
		{"mac refuses a signing key", sig, nil, (*Key).ForMAC, 0, ErrWrongPurpose},
		{"mac verify accepts an older enabled version", mac, nil, func(k *Key) (Version, error) { return k.ForVerifyMAC(4) }, 4, nil},
		{"mac verify refuses a destroyed version", mac, nil, func(k *Key) (Version, error) { return k.ForVerifyMAC(1) }, 0, ErrVersionDestroyed},
		{"mac verify refuses an encrypt key", enc, nil, func(k *Key) (Version, error) { return k.ForVerifyMAC(4) }, 0, ErrWrongPurpose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := fixtureFor(t, tt.purpose)
			if tt.setup != nil {
				tt.setup(k)
			}
			v, err := tt.call(k)
			if tt.wantErr != nil {
				checkErr(t, err, tt.wantErr)
				return
			}
			if err != nil || v.Number != tt.want || v.State != StateEnabled {
				t.Fatalf("got version %d (%s), %v; want enabled version %d", v.Number, v.State, err, tt.want)
			}
		})
	}
}

func TestEverySigningPurposeSignsAndNoOtherDoes(t *testing.T) {
	for p := PurposeUnspecified + 1; p.Valid(); p++ {
		k := fixtureFor(t, p)
		_, err := k.ForSign()
		if p.IsSigning() != (err == nil) {
			t.Errorf("%s: ForSign err = %v, IsSigning = %v", p, err, p.IsSigning())
		}
	}
}

func TestReturnedVersionIsACopy(t *testing.T) {
	k := fixture(t)
	v, err := k.ForEncrypt()
	if err != nil {
		t.Fatal(err)
	}
	v.HSMID[0] ^= 0xff
	if again, _ := k.ForEncrypt(); !bytes.Equal(again.HSMID, hsmID(5)) {
		t.Fatal("changing a returned version changed the key")
	}
	c := k.Clone()
	c.Versions[0].HSMID[0] ^= 0xff
	c.ID[0] ^= 0xff
	if !reflect.DeepEqual(k, fixture(t)) {
		t.Fatal("changing a clone changed the original")
	}
}

func TestKeySurvivesJSONUnchanged(t *testing.T) {
	k := fixture(t)
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"purpose":"encrypt-aes256-gcm"`, `"state":"destroy-scheduled"`, `"state":"destroyed"`, `"never_extractable":true`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	var back Key
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, k) {
		t.Fatalf("JSON round trip changed the key:\n got  %+v\n want %+v", &back, k)
	}
	if err := back.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestJSONRefusesUnknownPurposeAndState(t *testing.T) {
	var k Key
	if err := json.Unmarshal([]byte(`{"purpose":"encrypt-des"}`), &k); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("unknown purpose: err = %v", err)
	}
	if err := json.Unmarshal([]byte(`{"versions":[{"state":"lost"}]}`), &k); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("unknown state: err = %v", err)
	}
	if _, err := json.Marshal(Key{}); err == nil {
		t.Error("a key with no purpose was encoded")
	}
}

func TestPurposeNamesRoundTrip(t *testing.T) {
	want := []string{"encrypt-aes256-gcm", "mac-hmac-sha256", "sign-ecdsa-p256", "sign-ecdsa-p384", "sign-ed25519", "sign-rsa-pss-3072"}
	var got []string
	for p := PurposeUnspecified + 1; p.Valid(); p++ {
		got = append(got, p.String())
		back, err := ParsePurpose(p.String())
		if err != nil || back != p {
			t.Errorf("ParsePurpose(%q) = %v, %v", p, back, err)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("purposes = %v, want %v", got, want)
	}
	for _, bad := range []string{"", "unspecified", "ENCRYPT-AES256-GCM", "sign-rsa-pss-2048"} {
		if _, err := ParsePurpose(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ParsePurpose(%q) err = %v, want ErrInvalidArgument", bad, err)
		}
	}
	if s := Purpose(99).String(); s != "purpose(99)" {
		t.Errorf("Purpose(99).String() = %q", s)
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"relay-master.v2_eu", true},
		{"0day", true},
		{"_internal", true},
		{strings.Repeat("k", MaxNameLen), true},
		{"", false},
		{strings.Repeat("k", MaxNameLen+1), false},
		{".hidden", false},
		{"-flag", false},
		{"a/b", false},
		{"a b", false},
		{"clé", false},
		{"a\x00", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidName)) {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestNewKeyRefusesBadInput(t *testing.T) {
	id := NewKeyID()
	tests := []struct {
		name    string
		id      []byte
		keyName string
		purpose Purpose
		desc    string
		now     time.Time
		wantErr error
	}{
		{"empty id", nil, "k", PurposeSignEd25519, "", t0, ErrInvalidArgument},
		{"65-byte id", make([]byte, 65), "k", PurposeSignEd25519, "", t0, ErrInvalidArgument},
		{"bad name", id, "-k", PurposeSignEd25519, "", t0, ErrInvalidName},
		{"unspecified purpose", id, "k", PurposeUnspecified, "", t0, ErrInvalidArgument},
		{"undefined purpose", id, "k", Purpose(42), "", t0, ErrInvalidArgument},
		{"long description", id, "k", PurposeSignEd25519, strings.Repeat("d", MaxDescriptionLen+1), t0, ErrInvalidArgument},
		{"invalid utf-8 description", id, "k", PurposeSignEd25519, "\xff", t0, ErrInvalidArgument},
		{"zero time", id, "k", PurposeSignEd25519, "", time.Time{}, ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewKey(tt.id, tt.keyName, tt.purpose, tt.desc, tt.now)
			if k != nil {
				t.Fatalf("NewKey returned %+v", k)
			}
			checkErr(t, err, tt.wantErr)
		})
	}
	k, err := NewKey(id, "k", PurposeSignEd25519, "", t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Validate(); err != nil {
		t.Fatalf("a new key without versions is invalid: %v", err)
	}
}

func TestNewKeyIDIsRandom(t *testing.T) {
	a, b := NewKeyID(), NewKeyID()
	if len(a) != KeyIDLen || bytes.Equal(a, b) {
		t.Fatalf("NewKeyID gave %x and %x", a, b)
	}
}

func TestValidateRefusesInconsistentStoredKeys(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Key)
	}{
		{"bad name", func(k *Key) { k.Name = "a b" }},
		{"zero creation time", func(k *Key) { k.Created = time.Time{} }},
		{"version numbers out of order", func(k *Key) { k.Versions[3].Number = 7 }},
		{"invalid state", func(k *Key) { k.Versions[3].State = StateUnspecified }},
		{"extractable version", func(k *Key) { k.Versions[3].Attrs.Extractable = true }},
		{"shared hsm id", func(k *Key) { k.Versions[3].HSMID = hsmID(2) }},
		{"primary missing", func(k *Key) { k.Primary = 6 }},
		{"primary disabled", func(k *Key) { k.Primary = 3 }},
		{"min decrypt above primary", func(k *Key) { k.Primary, k.MinDecrypt = 4, 5 }},
		{"scheduled without a due time", func(k *Key) { k.Versions[1].DestroyAt = time.Time{} }},
		{"enabled with a due time", func(k *Key) { k.Versions[3].DestroyAt = t0 }},
		{"destroyed without a destruction time", func(k *Key) { k.Versions[0].DestroyedAt = time.Time{} }},
		{"no versions but a primary", func(k *Key) { k.Versions = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := fixture(t)
			tt.edit(k)
			if err := k.Validate(); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("Validate = %v, want ErrInvalidArgument", err)
			}
		})
	}
}

// A record written before all eight custody attributes were kept still
// loads (the three missing ones were verified by hsm on every key it made);
// a current record keeps all eight exactly, and an edited one is refused.
func TestAttrsReadLegacyAndCurrentRecords(t *testing.T) {
	var legacy Attrs
	if err := json.Unmarshal([]byte(`{"never_extractable":true,"always_sensitive":true,"local":true,"extractable":false,"sensitive":true}`), &legacy); err != nil {
		t.Fatal(err)
	}
	if !legacy.Token || !legacy.Private || legacy.Modifiable || legacy.Validate() != nil {
		t.Fatalf("legacy record: %+v, %v", legacy, legacy.Validate())
	}
	var cur Attrs
	if err := json.Unmarshal([]byte(`{"token":true,"private":false,"sensitive":true,"always_sensitive":true,"extractable":false,"never_extractable":true,"local":true,"modifiable":false,"unverified":["private"]}`), &cur); err != nil {
		t.Fatal(err)
	}
	if cur.Private || cur.Validate() != nil || cur.Safe() != true || cur.Verified() {
		t.Fatalf("current record with a waived attribute: %+v, %v", cur, cur.Validate())
	}
	var bad Attrs
	_ = json.Unmarshal([]byte(`{"token":false,"private":true,"sensitive":true,"always_sensitive":true,"never_extractable":true,"local":true}`), &bad)
	if bad.Validate() == nil {
		t.Fatal("a session object was accepted")
	}
}
