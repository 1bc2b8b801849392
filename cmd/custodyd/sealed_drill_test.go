package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/seal"
)

// submitAs makes officer o's submission in-process (what custodyctl unseal
// does), letting the test alter the share first.
func (v *vault) submitAs(t *testing.T, o officer, alter func(share []byte)) *custodyv1.UnsealRequest {
	t.Helper()
	c := custodyv1.NewSealServiceClient(v.conn(t, "officer"))
	es, err := c.GetShare(tctx(t), &custodyv1.GetShareRequest{OfficerFingerprint: o.fp})
	if err != nil {
		t.Fatalf("GetShare %s: %v", o.name, err)
	}
	ref := seal.VaultRef{VaultID: es.GetVaultId(), Epoch: es.GetEpoch()}
	sh, err := seal.OpenShare(o.share, ref, seal.Envelope{Index: int(es.GetIndex()), ShareKey: es.GetSharePublicKeyDer(),
		Sealed: es.GetSealedShare(), Commitment: es.GetCommitment()})
	if err != nil {
		t.Fatal(err)
	}
	share := bytes.Clone(sh.Bytes())
	sh.Destroy()
	if alter != nil {
		alter(share)
	}
	sub, err := seal.Submit(o.signer, share, seal.Target{Ref: ref, Index: int(es.GetIndex()), EphemeralKey: es.GetUnsealPublicKeyDer(), Nonce: es.GetNonce()})
	if err != nil {
		t.Fatal(err)
	}
	return &custodyv1.UnsealRequest{VaultId: sub.Ref.VaultID, Epoch: sub.Ref.Epoch, Index: uint32(sub.Index), OfficerFingerprint: sub.OfficerFingerprint,
		UnsealKeyFingerprint: sub.EphemeralFingerprint, Nonce: sub.Nonce, SealedShare: sub.Sealed, Signature: sub.Signature}
}

// TestSealedVaultDrill is the drill of a rogue operator with root on the
// vault's host against a production vault after a 2-of-3 ceremony: the PIN
// is in no file; every restart (crash, second instance) needs two officers;
// wrong, replayed, corrupt and non-officer shares are refused and on the
// audit record; a second custodyd on the token is refused even when
// unsealed; the token going away and coming back needs no officer; and
// after an unseal neither the logs, the metrics, the audit files nor the
// process's memory hold the PIN or a share.
func TestSealedVaultDrill(t *testing.T) {
	v := newVault(t)
	v.start(t)
	v.ceremony(t)
	v.stop(t, syscall.SIGTERM)
	rec := readRecord(t, filepath.Join(v.data, "custody.db"))
	alice, bob, carol, mallory := v.loadOfficer(t, "alice"), v.loadOfficer(t, "bob"), v.loadOfficer(t, "carol"), v.loadOfficer(t, "mallory")
	pin := pinFromShares(t, rec, alice, bob)
	secrets := map[string][]byte{"the PIN": pin}
	for _, o := range []officer{alice, bob, carol} {
		env, _ := rec.Holder(o.fp)
		sh, err := seal.OpenShare(o.share, rec.Ref(), env)
		if err != nil {
			t.Fatal(err)
		}
		secrets[o.name+"'s share"] = bytes.Clone(sh.Bytes())
		sh.Destroy()
	}

	v.start(t)
	sc := custodyv1.NewSealServiceClient(v.conn(t, "officer"))
	crypto := func() error {
		_, err := custodyv1.NewCryptoServiceClient(v.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
		return err
	}

	// A relay is no officer.
	_, err := custodyv1.NewSealServiceClient(v.conn(t, "relay")).GetShare(tctx(t), &custodyv1.GetShareRequest{OfficerFingerprint: alice.fp})
	wantCode(t, err, codes.PermissionDenied, "relay fetches a share")
	// Mallory has an officer's certificate but her key holds no share, and
	// she cannot pass off a share as alice's.
	_, err = sc.GetShare(tctx(t), &custodyv1.GetShareRequest{OfficerFingerprint: mallory.fp})
	wantCode(t, err, codes.PermissionDenied, "mallory fetches a share")
	forged := v.submitAs(t, alice, nil)
	forged.OfficerFingerprint = mallory.fp
	_, err = sc.Unseal(tctx(t), forged)
	wantCode(t, err, codes.PermissionDenied, "non-officer submission")
	// Alice's share: accepted; the same submission again: replayed.
	good := v.submitAs(t, alice, nil)
	if st, err := sc.Unseal(tctx(t), good); err != nil || st.GetSharesAccepted() != 1 {
		t.Fatalf("alice: %v %v", st, err)
	}
	_, err = sc.Unseal(tctx(t), good)
	wantCode(t, err, codes.FailedPrecondition, "replayed submission")
	// Bob's share, corrupted: refused before any login is tried.
	_, err = sc.Unseal(tctx(t), v.submitAs(t, bob, func(s []byte) { s[len(s)-1] ^= 0x5a }))
	wantCode(t, err, codes.InvalidArgument, "corrupt share")
	// Still sealed with one share in.
	wantCode(t, crypto(), codes.Unavailable, "encrypt with one good share in")
	if code, body := v.get(t, "/readyz"); code != 503 || !strings.Contains(body, "1 accepted") {
		t.Fatalf("readyz: %d %q", code, body)
	}
	if _, body := v.get(t, "/metrics"); !strings.Contains(body, `custody_seal_submissions_total{outcome="replayed"} 1`) ||
		!strings.Contains(body, `custody_seal_state{state="sealed"} 1`) || !strings.Contains(body, "custody_seal_shares_accepted 1") {
		t.Fatalf("seal metrics:\n%s", grepLines(body, "custody_seal"))
	}
	// Carol, with the real CLI, completes the unseal.
	if inv := v.unseal(t, "carol"); inv.code != 0 || !strings.Contains(inv.stdout, "unsealed") {
		t.Fatalf("carol: %+v\n%s", inv, v.stderr)
	}
	if err := crypto(); err != nil {
		t.Fatalf("relay after unseal: %v", err)
	}

	// Every refusal is on the record, written while sealed.
	var outcomes []string
	for _, r := range auditRecords(t, filepath.Join(v.data, "audit")) {
		switch r["method"] {
		case "Unseal", "GetShare", "Unsealed":
			outcomes = append(outcomes, fmt.Sprintf("%s/%s/%s", r["method"], r["outcome"], r["code"]))
		}
	}
	for _, want := range []string{"GetShare/denied/PermissionDenied", "Unseal/denied/PermissionDenied", "Unseal/ok/OK",
		"Unseal/error/FailedPrecondition", "Unseal/error/InvalidArgument", "Unsealed/ok/OK"} {
		if !contains(outcomes, want) {
			t.Errorf("audit lacks %s; has %v", want, outcomes)
		}
	}

	// The token goes away and comes back: the vault recovers by itself
	// with the PIN it keeps masked in locked memory, no officer needed.
	moved := v.tok.TokenDir + ".away"
	if err := os.Rename(v.tok.TokenDir, moved); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "token gone", func() (bool, string) { err := crypto(); return status.Code(err) == codes.Unavailable, fmt.Sprint(err) })
	if err := os.Rename(moved, v.tok.TokenDir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "recovered after the token came back", func() (bool, string) { err := crypto(); return err == nil, fmt.Sprint(err) })

	// Nothing holds the PIN or a share: logs, metrics, audit, store, and
	// the memory of the running, unsealed process.
	_, metrics := v.get(t, "/metrics")
	scan := map[string][]byte{"metrics": []byte(metrics)}
	for i, l := range v.logs {
		scan[fmt.Sprintf("log of run %d", i+1)] = []byte(l.String())
	}
	filepath.Walk(v.dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			b, _ := os.ReadFile(path)
			scan[path] = b
		}
		return nil
	})
	for where, b := range scan {
		for what, s := range secrets {
			if bytes.Contains(b, s) {
				t.Errorf("%s holds %s", where, what)
			}
		}
	}
	scanProcessMemory(t, v.pid, secrets)

	// A crash (SIGKILL) and a restart: sealed again; officers unseal it.
	v.stop(t, syscall.SIGKILL)
	v.start(t)
	wantCode(t, crypto(), codes.Unavailable, "after a crash")
	for _, n := range []string{"alice", "bob"} {
		if inv := v.unseal(t, n); inv.code != 0 {
			t.Fatalf("%s after the crash: %+v\n%s", n, inv, v.stderr)
		}
	}
	if err := crypto(); err != nil {
		t.Fatalf("after the crash and unseal: %v", err)
	}

	// A second custodyd on the same token, with a copied store and its own
	// audit directory: sealed, and even when two officers are fooled into
	// unsealing it, it refuses to serve while the first holds the token.
	first := *v
	second := *v
	second.data = filepath.Join(v.dir, "data2")
	os.MkdirAll(filepath.Join(second.data, "audit"), 0o700)
	db, _ := os.ReadFile(filepath.Join(v.data, "custody.db"))
	os.WriteFile(filepath.Join(second.data, "custody.db"), db, 0o600)
	second.cfgFile = filepath.Join(v.dir, "custodyd2.yaml")
	second.writeConfig(t, second.cfgFile, second.data)
	second.startWith(t, second.cfgFile)
	_, err = custodyv1.NewCryptoServiceClient(second.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
	wantCode(t, err, codes.Unavailable, "second instance, sealed")
	if inv := second.unseal(t, "alice"); inv.code != 0 {
		t.Fatalf("alice on the second: %+v", inv)
	}
	inv := second.unseal(t, "bob")
	if inv.code == 0 || !strings.Contains(inv.stderr, "another custodyd holds this HSM token") || !strings.Contains(inv.stderr, "pid "+strconv.Itoa(first.pid)) {
		t.Fatalf("second instance unsealed: %+v", inv)
	}
	_, err = custodyv1.NewCryptoServiceClient(second.conn(t, "relay")).Encrypt(tctx(t), &custodyv1.EncryptRequest{KeyName: "msgs", Plaintext: []byte("x")})
	wantCode(t, err, codes.Unavailable, "second instance after the refused unseal")
	if st := second.sealStatus(t); st.GetState() != custodyv1.SealState_SEAL_STATE_SEALED || !strings.Contains(st.GetDetail(), "another custodyd") {
		t.Fatalf("second instance status: %v", st)
	}
	if err := crypto(); err != nil {
		t.Fatalf("the first instance stopped serving: %v", err)
	}
	second.stop(t, syscall.SIGTERM)
	// The second instance was never unsealed, yet its refusal is on its own
	// hash-chained record, written while it was sealed.
	var refused bool
	for _, r := range auditRecords(t, filepath.Join(second.data, "audit")) {
		if r["method"] == "Unsealed" && r["outcome"] == "error" && strings.Contains(fmt.Sprint(r["detail"]), "another custodyd") {
			refused = true
		}
	}
	if !refused {
		t.Error("the second instance's refused unseal is not in its audit log")
	}
	v.stop(t, syscall.SIGTERM)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// scanProcessMemory reads every readable mapping of process pid through
// /proc/PID/mem and fails if any holds one of secrets. custodyd makes
// itself non-dumpable, so only a process with CAP_SYS_PTRACE (root, as in
// CI) can read it: without it the read must be refused, which is the
// point of PR_SET_DUMPABLE=0.
func scanProcessMemory(t *testing.T, pid int, secrets map[string][]byte) {
	t.Helper()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		if os.Geteuid() != 0 && errors.Is(err, os.ErrPermission) {
			t.Logf("memory scan: /proc/%d/mem refused to a non-root test (custodyd is not dumpable); run as root (CI does) to scan it", pid)
			return
		}
		t.Fatalf("open /proc/%d/mem: %v", pid, err)
	}
	defer mem.Close()
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	longest := 0
	for _, s := range secrets {
		longest = max(longest, len(s))
	}
	var scanned int64
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[1][0] != 'r' || (len(f) >= 6 && strings.HasPrefix(f[5], "[v")) {
			continue
		}
		lo, hi, _ := strings.Cut(f[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		const chunk = 1 << 20
		buf := make([]byte, chunk+longest)
		for off := start; off < end; off += chunk {
			n := int(min(uint64(len(buf)), end-off))
			got, err := mem.ReadAt(buf[:n], int64(off))
			if err != nil && !errors.Is(err, io.EOF) && got == 0 {
				break // unreadable region (device mapping, guard page)
			}
			scanned += int64(got)
			for what, s := range secrets {
				if i := bytes.Index(buf[:got], s); i >= 0 {
					region := "anonymous"
					if len(f) >= 6 {
						region = f[5]
					}
					t.Errorf("custodyd's memory holds %s at %#x (%s, %s)", what, off+uint64(i), f[0], region)
				}
			}
		}
	}
	t.Logf("memory scan: %d MiB of custodyd's mappings read; no PIN, no share", scanned>>20)
}
