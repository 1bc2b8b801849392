package sealsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/seal"
	"github.com/custodyhq/custody/internal/secmem"
	"github.com/custodyhq/custody/internal/store"
)

// pendingRekey is a rekey waiting for its new holders' confirmations. The
// new PIN lives only here, in this process's locked memory: a restart
// abandons the rekey and the old PIN stays in force.
type pendingRekey struct {
	proposal  string
	rec       *seal.Record
	proofs    map[int][]byte
	confirmed map[int]bool
	pin       *secmem.Buffer
}

// storedRekey is RekeyKey: what is pending, for status and for the next
// start to know a rekey was abandoned. It holds no secret.
type storedRekey struct {
	Proposal  string          `json:"proposal"`
	Record    json.RawMessage `json:"record"`
	Confirmed []int           `json:"confirmed"`
}

func (r *pendingRekey) ops() ([]store.Op, error) {
	rb, err := recordBytes(r.rec)
	if err != nil {
		return nil, err
	}
	sr := storedRekey{Proposal: r.proposal, Record: rb, Confirmed: []int{}}
	for i := range r.confirmed {
		sr.Confirmed = append(sr.Confirmed, i)
	}
	slices.Sort(sr.Confirmed)
	b, err := json.Marshal(sr)
	if err != nil {
		return nil, err
	}
	return []store.Op{store.PutOp(RekeyKey, b)}, nil
}

// StartRekey executes a rekey-seal proposal: it makes a new random PIN,
// splits it among officers (the current officer set, M its threshold), each
// share encrypted to the officer's share key (from the proposal, or the one
// their current share is encrypted to), and records the rekey as pending.
// The token keeps the old PIN until every new holder has confirmed
// (ConfirmRekey). A pending rekey is replaced by a newer one.
func (s *Service) StartRekey(ctx context.Context, proposalID string, officers quorum.OfficerSet, pl quorum.RekeySeal) error {
	li := s.loggedIn.Load()
	switch {
	case s.o.PINSource != "":
		return fmt.Errorf("this vault reads its PIN from %s: rekey by quorum needs a sealed vault", s.o.PINSource)
	case li == nil:
		return fmt.Errorf("the HSM is not logged in")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rec == nil {
		return fmt.Errorf("no seal record: the vault's PIN was never split among officers")
	}
	given := map[string][]byte{}
	for _, k := range pl.ShareKeys {
		given[k.Officer] = k.PublicKey
	}
	var holders []seal.Holder
	for _, o := range officers.Officers {
		key, ok := given[o.Name]
		if !ok {
			i := slices.IndexFunc(s.rec.Shares, func(e seal.Envelope) bool { return e.Officer == o.Name && bytes.Equal(e.OfficerKey, o.PublicKey) })
			if i < 0 {
				return fmt.Errorf("officer %s has no share key: give one in the proposal's share_keys", o.Name)
			}
			key = s.rec.Shares[i].ShareKey
		}
		delete(given, o.Name)
		holders = append(holders, seal.Holder{Officer: o.Name, OfficerKey: o.PublicKey, ShareKey: key})
	}
	if len(given) > 0 {
		var names []string
		for n := range given {
			names = append(names, n)
		}
		slices.Sort(names)
		return fmt.Errorf("share_keys name %s, who are not officers", strings.Join(names, ", "))
	}
	rec := &seal.Record{Format: seal.RecordFormat, VaultID: s.rec.VaultID, Epoch: s.rec.Epoch + 1, Threshold: officers.Threshold,
		AuditKey: s.rec.AuditKey, Created: s.o.Now().UTC()}
	if len(rec.AuditKey) == 0 {
		rec.AuditKey = li.auditKey
	}
	pin, err := newPIN(ctx, li.token)
	if err != nil {
		return err
	}
	envs, proofs, err := seal.Split(rec.Ref(), pin.Bytes(), rec.Threshold, holders)
	if err != nil {
		pin.Destroy()
		return err
	}
	rec.Shares = envs
	r := &pendingRekey{proposal: proposalID, rec: rec, proofs: map[int][]byte{}, confirmed: map[int]bool{}, pin: pin}
	for i, e := range envs {
		r.proofs[e.Index] = proofs[i]
	}
	ops, err := r.ops()
	if err == nil {
		err = li.store.Txn(ctx, nil, ops)
	}
	if err != nil {
		pin.Destroy()
		return fmt.Errorf("record the pending rekey: %w", err)
	}
	if old := s.rekey; old != nil {
		old.pin.Destroy()
	}
	s.rekey = r
	s.log.Info("seal: rekey started; the old PIN stays in force until every new holder confirms", "proposal", proposalID,
		"epoch", rec.Epoch, "threshold", rec.Threshold, "holders", len(envs))
	return nil
}

// GetRekeyShare implements SealService.
func (s *Service) GetRekeyShare(ctx context.Context, req *custodyv1.GetShareRequest) (_ *custodyv1.EncryptedShare, err error) {
	id, role, err := s.officer(ctx)
	rec := audit.Record{Identity: orUnauthenticated(id), Role: string(role), Method: "GetRekeyShare"}
	defer func() { s.finish(ctx, rec, err) }()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rekey == nil {
		return nil, status.Error(codes.NotFound, "no rekey is pending")
	}
	env, ok := s.rekey.rec.Holder(req.GetOfficerFingerprint())
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "no new share for signing key %s", short(req.GetOfficerFingerprint()))
	}
	rec.Detail = fmt.Sprintf("new share %d (epoch %d) served to %s", env.Index, s.rekey.rec.Epoch, env.Officer)
	return encryptedShare(s.rekey.rec, env, seal.Target{}), nil
}

// ConfirmRekey implements SealService. The last confirmation retires the
// old PIN: C_SetPIN to the new one, then the new shares replace the old in
// one store write (the PIN is restored if that write fails).
func (s *Service) ConfirmRekey(ctx context.Context, req *custodyv1.ConfirmRekeyRequest) (_ *custodyv1.SealStatus, err error) {
	id, role, err := s.officer(ctx)
	rec := audit.Record{Identity: orUnauthenticated(id), Role: string(role), Method: "ConfirmRekey"}
	recorded := false
	defer func() {
		if !recorded {
			s.finish(ctx, rec, err)
		}
	}()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rekey
	li := s.loggedIn.Load()
	if r == nil || li == nil {
		return nil, status.Error(codes.NotFound, "no rekey is pending")
	}
	env, ok := r.rec.Holder(req.GetOfficerFingerprint())
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "no new share for signing key %s", short(req.GetOfficerFingerprint()))
	}
	c := &seal.Confirmation{Ref: seal.VaultRef{VaultID: req.GetVaultId(), Epoch: req.GetEpoch()}, Index: int(req.GetIndex()),
		OfficerFingerprint: req.GetOfficerFingerprint(), Proof: req.GetProof(), Signature: req.GetSignature()}
	if err := seal.VerifyConfirmation(c, r.rec.Ref(), env, r.proofs[env.Index]); err != nil {
		rec.Detail = fmt.Sprintf("%s: confirmation refused: %v", env.Officer, err)
		return nil, toStatus(err)
	}
	r.confirmed[env.Index] = true
	rec.Detail = fmt.Sprintf("%s confirmed new share %d (epoch %d): %d of %d", env.Officer, env.Index, r.rec.Epoch, len(r.confirmed), len(r.rec.Shares))
	if len(r.confirmed) < len(r.rec.Shares) {
		if ops, err := r.ops(); err == nil {
			_ = li.store.Txn(ctx, nil, ops) // progress, for status after a failover; not needed to finish
		}
		return s.statusLocked(), nil
	}
	// Every new holder can decrypt: retire the old PIN, once the last
	// confirmation is on the record.
	rec.Detail += "; retiring the old PIN"
	if err := s.record(ctx, withOutcome(rec, nil)); err != nil {
		return nil, status.Error(codes.Unavailable, "audit log unavailable: confirmation refused (confirm again when it is back)")
	}
	recorded = true
	change, err := li.token.ChangePIN(ctx, r.pin.Bytes())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "every holder confirmed, but replacing the PIN failed (confirm again to retry): %v", err)
	}
	rb, err := recordBytes(r.rec)
	if err == nil {
		err = li.store.Txn(ctx, nil, []store.Op{store.PutOp(RecordKey, rb), store.DeleteOp(RekeyKey)})
	}
	if err != nil {
		if rerr := change.Revert(context.WithoutCancel(ctx)); rerr != nil {
			s.log.Error("seal: the new shares could not be stored and the old PIN could not be restored; the PIN is now known only to this process: propose a rekey again before stopping custodyd", "err", rerr)
		}
		return nil, status.Errorf(codes.Unavailable, "every holder confirmed, but storing the new shares failed; the old PIN stays (confirm again to retry): %v", err)
	}
	change.Done()
	r.pin.Destroy()
	s.rec, s.rekey = r.rec, nil
	_ = s.record(ctx, audit.Record{Identity: "custodyd", Method: "Rekeyed", Outcome: audit.OutcomeOK, Code: codes.OK.String(),
		Detail: fmt.Sprintf("old PIN retired; epoch %d shares (%d of %d) in force", r.rec.Epoch, r.rec.Threshold, len(r.rec.Shares))})
	s.log.Info("seal: rekey complete: the old PIN is retired; only the new shares unseal", "epoch", r.rec.Epoch)
	return s.statusLocked(), nil
}
