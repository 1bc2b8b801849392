package seal

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"
	"time"
)

type testOfficer struct {
	name   string
	signer crypto.Signer
	share  *ecdh.PrivateKey
	holder Holder
}

func officers(t *testing.T, names ...string) []testOfficer {
	t.Helper()
	var out []testOfficer
	for i, n := range names {
		var s crypto.Signer
		if i%2 == 0 {
			_, s, _ = ed25519.GenerateKey(rand.Reader)
		} else {
			s, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		sk, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		okey, _ := x509.MarshalPKIXPublicKey(s.Public())
		shk, _ := MarshalPublicKey(sk.PublicKey())
		out = append(out, testOfficer{name: n, signer: s, share: sk, holder: Holder{Officer: n, OfficerKey: okey, ShareKey: shk}})
	}
	return out
}

type fixture struct {
	offs []testOfficer
	rec  *Record
	pin  []byte
	eph  *EphemeralKey
	now  time.Time
	u    *Unsealer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{offs: officers(t, "alice", "bob", "carol"), pin: []byte("Zq8x1Vb0QeWm3Tn7Kp2Lr9Ys5Ua4Hd6Jf0Gc1Bx"), now: time.Unix(1_800_000_000, 0)}
	id, _ := NewVaultID()
	ref := VaultRef{VaultID: id, Epoch: 1}
	var hs []Holder
	for _, o := range f.offs {
		hs = append(hs, o.holder)
	}
	envs, proofs, err := Split(ref, f.pin, 2, hs)
	if err != nil {
		t.Fatal(err)
	}
	if len(proofs) != 3 {
		t.Fatal("proofs")
	}
	f.rec = &Record{Format: RecordFormat, VaultID: id, Epoch: 1, Threshold: 2, Created: f.now, Shares: envs}
	b, _ := f.rec.Encode()
	if _, err := ParseRecord(b); err != nil {
		t.Fatalf("record does not parse back: %v", err)
	}
	if f.eph, err = NewEphemeralKey(); err != nil {
		t.Fatal(err)
	}
	f.u, err = NewUnsealer(f.rec, f.eph, 15*time.Minute, func() time.Time { return f.now })
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// submission is what `custodyctl unseal` does for officer o.
func (f *fixture) submission(t *testing.T, o testOfficer) *Submission {
	t.Helper()
	okey, _ := x509.MarshalPKIXPublicKey(o.signer.Public())
	env, tgt, err := f.u.Target(Fingerprint(okey))
	if err != nil {
		t.Fatal(err)
	}
	share, err := OpenShare(o.share, f.rec.Ref(), env)
	if err != nil {
		t.Fatal(err)
	}
	defer share.Destroy()
	s, err := Submit(o.signer, share.Bytes(), tgt)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTwoOfThreeSharesUnsealAndOneDoesNot(t *testing.T) {
	f := newFixture(t)
	p, pin, who, err := f.u.Submit(f.submission(t, f.offs[0]))
	if err != nil || pin != nil || p.Have != 1 || p.Need != 2 || who != "alice" {
		t.Fatalf("first share: %+v pin=%v who=%q %v", p, pin != nil, who, err)
	}
	if !p.Expires.Equal(f.now.Add(15 * time.Minute)) {
		t.Fatalf("expires %v", p.Expires)
	}
	p, pin, _, err = f.u.Submit(f.submission(t, f.offs[2]))
	if err != nil || pin == nil {
		t.Fatalf("second share: %+v %v", p, err)
	}
	defer pin.Destroy()
	if !bytes.Equal(pin.Bytes(), f.pin) {
		t.Fatal("recombined PIN differs")
	}
	if q := f.u.Progress(); q.Have != 0 {
		t.Fatalf("shares kept after combining: %+v", q)
	}
}

func TestRefusedSubmissionsNameTheirCause(t *testing.T) {
	f := newFixture(t)
	good := f.submission(t, f.offs[0])
	if _, _, _, err := f.u.Submit(good); err != nil {
		t.Fatal(err)
	}
	// Replayed: the same bytes again.
	if _, _, _, err := f.u.Submit(good); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay: %v", err)
	}
	// Duplicate: alice again with a fresh nonce.
	if _, _, _, err := f.u.Submit(f.submission(t, f.offs[0])); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate: %v", err)
	}
	// Not an officer: a stranger signs bob's share.
	bob := f.submission(t, f.offs[1])
	stranger := officers(t, "mallory")[0]
	forged := *bob
	sfp, _ := x509.MarshalPKIXPublicKey(stranger.signer.Public())
	forged.OfficerFingerprint = Fingerprint(sfp)
	forged.Signature, _ = sign(stranger.signer, domainSubmit, forged.digest())
	if _, _, _, err := f.u.Submit(&forged); !errors.Is(err, ErrNotOfficer) {
		t.Fatalf("stranger: %v", err)
	}
	// Bob's own submission was not spent by the forgery (another nonce)...
	// ...but a signature over other bytes is refused.
	bob2 := f.submission(t, f.offs[1])
	bob2.Sealed[len(bob2.Sealed)-1] ^= 1
	if _, _, _, err := f.u.Submit(bob2); !errors.Is(err, ErrNotOfficer) {
		t.Fatalf("tampered after signing: %v", err)
	}
	// A corrupt share, properly signed: it does not decrypt.
	bob3 := f.submission(t, f.offs[1])
	bob3.Sealed[len(bob3.Sealed)-1] ^= 1
	bob3.Signature, _ = sign(f.offs[1].signer, domainSubmit, bob3.digest())
	if _, _, _, err := f.u.Submit(bob3); !errors.Is(err, ErrBadShare) {
		t.Fatalf("corrupt share: %v", err)
	}
	// A share that decrypts but is not bob's (carol's share under bob's name).
	carolEnv, _ := f.rec.Holder(f.offs[2].holder.fp())
	carolShare, err := OpenShare(f.offs[2].share, f.rec.Ref(), carolEnv)
	if err != nil {
		t.Fatal(err)
	}
	bobEnv, tgt, _ := f.u.Target(f.offs[1].holder.fp())
	wrong := bytes.Clone(carolShare.Bytes())
	wrong[0] = byte(bobEnv.Index) // right x, wrong y: fails the commitment
	s, _ := Submit(f.offs[1].signer, wrong, tgt)
	if _, _, _, err := f.u.Submit(s); !errors.Is(err, ErrBadShare) {
		t.Fatalf("wrong share: %v", err)
	}
	// A submission made for another custodyd (another unseal key).
	other, _ := NewEphemeralKey()
	_, tgt, _ = f.u.Target(f.offs[1].holder.fp())
	tgt.EphemeralKey = other.PublicKey()
	bobShare, _ := OpenShare(f.offs[1].share, f.rec.Ref(), bobEnv)
	s, _ = Submit(f.offs[1].signer, bobShare.Bytes(), tgt)
	if _, _, _, err := f.u.Submit(s); !errors.Is(err, ErrWrongTarget) {
		t.Fatalf("other unseal key: %v", err)
	}
	// Bob claiming carol's index with his own nonce.
	_, tgt, _ = f.u.Target(f.offs[1].holder.fp())
	tgt.Index = carolEnv.Index
	s, _ = Submit(f.offs[1].signer, bobShare.Bytes(), tgt)
	if _, _, _, err := f.u.Submit(s); !errors.Is(err, ErrWrongTarget) {
		t.Fatalf("another officer's index: %v", err)
	}
	// None of that counted: still one share; bob's good share finishes it.
	if p := f.u.Progress(); p.Have != 1 {
		t.Fatalf("progress after refusals: %+v", p)
	}
	_, pin, _, err := f.u.Submit(f.submission(t, f.offs[1]))
	if err != nil || pin == nil || !bytes.Equal(pin.Bytes(), f.pin) {
		t.Fatalf("bob: %v", err)
	}
	pin.Destroy()
}

func (h Holder) fp() string { return Fingerprint(h.OfficerKey) }

func TestPartialProgressExpires(t *testing.T) {
	f := newFixture(t)
	if _, _, _, err := f.u.Submit(f.submission(t, f.offs[0])); err != nil {
		t.Fatal(err)
	}
	stale := f.submission(t, f.offs[1]) // nonce issued now
	f.now = f.now.Add(15*time.Minute + time.Second)
	if got := f.u.Expire(); len(got) != 1 || got[0] != "alice" {
		t.Fatalf("expired %v", got)
	}
	if p := f.u.Progress(); p.Have != 0 || !p.Expires.IsZero() {
		t.Fatalf("progress after expiry: %+v", p)
	}
	if _, _, _, err := f.u.Submit(stale); !errors.Is(err, ErrReplayed) {
		t.Fatalf("stale nonce: %v", err)
	}
	// Alice must start again: one fresh share is not enough.
	if _, pin, _, err := f.u.Submit(f.submission(t, f.offs[1])); err != nil || pin != nil {
		t.Fatalf("after expiry: %v", err)
	}
}

func TestShareOpensOnlyForItsOfficerVaultAndEpoch(t *testing.T) {
	f := newFixture(t)
	env := f.rec.Shares[0]
	if _, err := OpenShare(f.offs[1].share, f.rec.Ref(), env); !errors.Is(err, ErrWrongTarget) {
		t.Fatalf("another officer's key: %v", err)
	}
	if _, err := OpenShare(f.offs[0].share, VaultRef{VaultID: f.rec.VaultID, Epoch: 2}, env); !errors.Is(err, ErrBadShare) {
		t.Fatalf("another epoch: %v", err)
	}
	bad := env
	bad.Commitment = bytes.Clone(env.Commitment)
	bad.Commitment[0] ^= 1
	if _, err := OpenShare(f.offs[0].share, f.rec.Ref(), bad); !errors.Is(err, ErrBadShare) {
		t.Fatalf("commitment swapped: %v", err)
	}
	sh, err := OpenShare(f.offs[0].share, f.rec.Ref(), env)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Destroy()
	if sh.Len() != len(f.pin)+1 {
		t.Fatalf("share is %d bytes", sh.Len())
	}
}

func TestRekeyConfirmationProvesDecryption(t *testing.T) {
	f := newFixture(t)
	env := f.rec.Shares[1]
	sh, err := OpenShare(f.offs[1].share, f.rec.Ref(), env)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Destroy()
	want := RekeyProof(f.rec.Ref(), env.Index, sh.Bytes())
	c, err := Confirm(f.offs[1].signer, f.rec.Ref(), env.Index, sh.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConfirmation(c, f.rec.Ref(), env, want); err != nil {
		t.Fatal(err)
	}
	// Copying the commitment is not a proof.
	lazy := *c
	lazy.Proof = env.Commitment
	lazy.Signature, _ = sign(f.offs[1].signer, domainConfirm, lazy.digest())
	if err := VerifyConfirmation(&lazy, f.rec.Ref(), env, want); !errors.Is(err, ErrBadShare) {
		t.Fatalf("commitment as proof: %v", err)
	}
	// Another officer cannot confirm for bob.
	forged := *c
	forged.Signature, _ = sign(f.offs[0].signer, domainConfirm, forged.digest())
	if err := VerifyConfirmation(&forged, f.rec.Ref(), env, want); !errors.Is(err, ErrNotOfficer) {
		t.Fatalf("forged: %v", err)
	}
}

func TestCeremonyPINOpensOnlyWithItsUnsealKey(t *testing.T) {
	eph, _ := NewEphemeralKey()
	other, _ := NewEphemeralKey()
	sealed, err := SealPIN(eph.PublicKey(), []byte("1234-installer"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.OpenPIN(sealed); !errors.Is(err, ErrWrongTarget) {
		t.Fatalf("other key: %v", err)
	}
	pin, err := eph.OpenPIN(sealed)
	if err != nil || string(pin.Bytes()) != "1234-installer" {
		t.Fatalf("open: %v", err)
	}
	pin.Destroy()
}

func TestSplitRefusesBadHoldersAndThresholds(t *testing.T) {
	offs := officers(t, "a", "b", "c")
	id, _ := NewVaultID()
	ref := VaultRef{VaultID: id, Epoch: 1}
	hs := []Holder{offs[0].holder, offs[1].holder, offs[2].holder}
	for name, tc := range map[string]struct {
		m  int
		hs []Holder
	}{
		"M=1":            {1, hs},
		"M>N":            {4, hs},
		"shared key":     {2, []Holder{offs[0].holder, {Officer: "b", OfficerKey: offs[1].holder.OfficerKey, ShareKey: offs[0].holder.ShareKey}}},
		"ed25519 share":  {2, []Holder{offs[0].holder, {Officer: "b", OfficerKey: offs[1].holder.OfficerKey, ShareKey: offs[0].holder.OfficerKey}}},
		"no signing key": {2, []Holder{offs[0].holder, {Officer: "b", ShareKey: offs[1].holder.ShareKey}}},
	} {
		if _, _, err := Split(ref, []byte("pin-pin-pin"), tc.m, tc.hs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRecordParsingIsStrict(t *testing.T) {
	f := newFixture(t)
	b, _ := f.rec.Encode()
	for name, edit := range map[string][]byte{
		"unknown field": bytes.Replace(b, []byte(`"epoch"`), []byte(`"extra":1,"epoch"`), 1),
		"trailing":      append(bytes.Clone(b), []byte(" {}")...),
		"bad format":    bytes.Replace(b, []byte(RecordFormat), []byte("custody-seal-record-v0"), 1),
		"threshold 1":   bytes.Replace(b, []byte(`"threshold":2`), []byte(`"threshold":1`), 1),
	} {
		if _, err := ParseRecord(edit); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v", name, err)
		}
	}
	tr := f.rec.Transcript()
	if tr.PINSource != SourceOfficers || len(tr.Shares) != 3 || tr.Shares[0].Commitment == "" {
		t.Fatalf("transcript section %+v", tr)
	}
}

// TestOneRequesterAskingForTargetsNeverSpendsAnothersNonce: a requester
// (one mTLS identity) asking for targets again and again drops only its own
// oldest nonces; the nonce handed to another requester still unseals, even
// after the overall bound is reached by many requesters.
func TestOneRequesterAskingForTargetsNeverSpendsAnothersNonce(t *testing.T) {
	f := newFixture(t)
	sub := func(requester string, o testOfficer) *Submission {
		t.Helper()
		okey, _ := x509.MarshalPKIXPublicKey(o.signer.Public())
		env, tgt, err := f.u.TargetFor(requester, Fingerprint(okey))
		if err != nil {
			t.Fatal(err)
		}
		share, err := OpenShare(o.share, f.rec.Ref(), env)
		if err != nil {
			t.Fatal(err)
		}
		defer share.Destroy()
		s, err := Submit(o.signer, share.Bytes(), tgt)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	alice := sub("spiffe://x/alice", f.offs[0])
	mine := sub("spiffe://x/carol", f.offs[2])
	for i := 0; i < 10*maxNoncesPerRequester; i++ {
		sub("spiffe://x/carol", f.offs[i%3])
	}
	if _, _, _, err := f.u.Submit(mine); !errors.Is(err, ErrReplayed) {
		t.Fatalf("carol's own oldest nonce after she asked for many more: %v, want ErrReplayed", err)
	}
	// Many requesters push the total past its bound: the one holding the
	// most loses first; alice, holding one, keeps hers.
	for i := 0; i < maxNonces/maxNoncesPerRequester+8; i++ {
		for j := 0; j < maxNoncesPerRequester; j++ {
			sub(fmt.Sprintf("spiffe://x/r%d", i), f.offs[1])
		}
	}
	if p, _, who, err := f.u.Submit(alice); err != nil || p.Have != 1 || who != "alice" {
		t.Fatalf("alice's nonce after the others' requests: %+v %q %v", p, who, err)
	}
}
