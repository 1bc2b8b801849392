package governance

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/store"
	"github.com/custodyhq/custody/internal/strictjson"
)

// CeremonyKey is one key the ceremony creates.
type CeremonyKey struct {
	Name        string       `json:"name"`
	Purpose     keys.Purpose `json:"purpose"`
	Description string       `json:"description,omitempty"`
}

// CeremonyRequest is the initial key ceremony: the officers and M, the keys
// to create, and the grants and budgets to install.
type CeremonyRequest struct {
	Officers []quorum.Officer `json:"officers"`
	// ShareKeys are the officers' share keys (PKIX DER, P-256), in the order
	// of Officers, for a sealed start; empty for a vault whose PIN is on
	// the host.
	ShareKeys [][]byte       `json:"share_keys,omitempty"`
	Threshold int            `json:"threshold"`
	AllowDev  bool           `json:"allow_dev"`
	Keys      []CeremonyKey  `json:"keys"`
	Grants    []policy.Grant `json:"grants"`
	Budgets   []BudgetEntry  `json:"budgets"`
}

// digest identifies a request, so a rerun can tell "the same ceremony,
// resumed" from "another ceremony".
func (r CeremonyRequest) digest() string {
	b, err := json.Marshal(r)
	if err != nil {
		panic("governance: ceremony request does not encode: " + err.Error())
	}
	d := sha256.Sum256(append([]byte("custody.ceremony.plan.v1\n"), b...))
	return hex.EncodeToString(d[:])
}

// plan is gov/ceremony-plan: a ceremony that has started and not finished.
// It is written before the first key is created and names every key created
// so far, so a rerun of the same ceremony resumes and a different one rolls
// the unfinished one back.
type plan struct {
	Digest  string          `json:"digest"`
	Request CeremonyRequest `json:"request"`
	Created []string        `json:"created"`
	Started time.Time       `json:"started"`
}

func loadPlan(ctx context.Context, st store.Store) (*plan, error) {
	kv, err := st.Get(ctx, planKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ceremony plan: %w", err)
	}
	var p plan
	if err := strictjson.Unmarshal(kv.Value, &p); err != nil {
		return nil, fmt.Errorf("%w: ceremony plan: %v", store.ErrCorrupt, err)
	}
	return &p, nil
}

func (g *Governance) putPlan(ctx context.Context, p *plan) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := store.Put(context.WithoutCancel(ctx), g.o.Store, planKey, b); err != nil {
		return fmt.Errorf("%w: ceremony plan: %w", ErrUnavailable, err)
	}
	return nil
}

// validate checks a ceremony request completely before anything is made.
// created are keys an unfinished run of this same ceremony made already.
func (g *Governance) validate(req CeremonyRequest, created []string) (quorum.OfficerSet, error) {
	if req.AllowDev && !g.o.AllowDev {
		return quorum.OfficerSet{}, fmt.Errorf("%w: allow_dev: this custodyd is not a development instance", ErrInvalid)
	}
	set := quorum.OfficerSet{Threshold: req.Threshold, Officers: slices.Clone(req.Officers)}
	for i, o := range set.Officers {
		if err := o.Validate(); err != nil {
			return set, fmt.Errorf("%w: officers[%d]: %v", ErrInvalid, i, err)
		}
	}
	if err := set.Validate(req.AllowDev); err != nil {
		return set, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	declared := map[string]bool{}
	for i, k := range req.Keys {
		if err := keys.ValidateName(k.Name); err != nil {
			return set, fmt.Errorf("%w: keys[%d].name: %v", ErrInvalid, i, err)
		}
		if !k.Purpose.Valid() {
			return set, fmt.Errorf("%w: keys[%d].purpose: unknown", ErrInvalid, i)
		}
		if declared[k.Name] {
			return set, fmt.Errorf("%w: keys[%d].name: duplicate", ErrInvalid, i)
		}
		declared[k.Name] = true
		if _, err := g.o.Keys.Get(k.Name); err == nil && !slices.Contains(created, k.Name) {
			return set, fmt.Errorf("%w: keys[%d].name: %q already exists", keys.ErrKeyExists, i, k.Name)
		}
	}
	for i, gr := range req.Grants {
		if err := gr.Validate(); err != nil {
			return set, fmt.Errorf("%w: grants[%d]: %v", ErrInvalid, i, err)
		}
		if !declared[gr.Key] {
			return set, fmt.Errorf("%w: grants[%d].key: %q is not declared", ErrInvalid, i, gr.Key)
		}
		if g.o.Check != nil {
			if err := g.o.Check(gr); err != nil {
				return set, fmt.Errorf("%w: grants[%d]: %v", ErrInvalid, i, err)
			}
		}
	}
	if _, err := policy.New(policy.Spec{Identities: g.identities(g.st), Grants: req.Grants}); err != nil {
		return set, fmt.Errorf("%w: grants: %v", ErrInvalid, err)
	}
	lim, err := policy.NewLimiter(g.o.Freeze)
	if err != nil {
		return set, err
	}
	for i, b := range req.Budgets {
		if !declared[b.Key] {
			return set, fmt.Errorf("%w: budgets[%d].key: %q is not declared", ErrInvalid, i, b.Key)
		}
		if slices.ContainsFunc(req.Budgets[:i], func(o BudgetEntry) bool { return o.Identity == b.Identity && o.Key == b.Key }) {
			return set, fmt.Errorf("%w: budgets[%d]: second budget for one identity and key", ErrInvalid, i)
		}
		if err := setBudget(lim, b, g.o.Now()); err != nil {
			return set, fmt.Errorf("%w: budgets[%d]: %v", ErrInvalid, i, err)
		}
	}
	return set, nil
}

// InitCeremony runs the initial key ceremony, once: validate everything,
// record a plan, create the keys (the plan names each as it is made), sign
// the transcript, and install officers, grants and budgets in one write. If
// it fails midway, running the same ceremony again resumes it; running a
// different one first deletes the keys the unfinished one created (they
// were never in use: nothing is granted until the ceremony completes).
func (g *Governance) InitCeremony(ctx context.Context, actor Actor, req CeremonyRequest) (*StoredTranscript, string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.sync(ctx); err != nil {
		return nil, "", err
	}
	if g.st.Ceremony {
		return nil, "", ErrCeremonyDone
	}
	digest := req.digest()
	pl, err := loadPlan(ctx, g.o.Store)
	if err != nil {
		return nil, "", err
	}
	resumed := pl != nil && pl.Digest == digest
	var created []string
	if resumed {
		created = pl.Created
	}
	set, err := g.validate(req, created)
	if err != nil {
		return nil, "", err
	}
	if pl != nil && !resumed {
		if err := g.rollback(ctx, actor, pl); err != nil {
			return nil, "", err
		}
		pl = nil
	}
	now := g.o.Now().UTC()
	if pl == nil {
		pl = &plan{Digest: digest, Request: req, Created: []string{}, Started: now}
		if err := g.record(ctx, Event{Actor: actor, Action: "ceremony-plan", Detail: fmt.Sprintf("plan %.16s: %d of %d officers, %d keys, %d grants, %d budgets",
			digest, set.Threshold, len(set.Officers), len(req.Keys), len(req.Grants), len(req.Budgets))}); err != nil {
			return nil, "", err
		}
		if err := g.putPlan(ctx, pl); err != nil {
			return nil, "", err
		}
	}
	ledger, err := quorum.NewLedger(set, quorum.LedgerOptions{TimeLock: g.o.TimeLock, AllowDev: req.AllowDev})
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}

	// The trust the configuration declares now is fixed by the ceremony.
	trust := ConfigTrust(g.o)
	t := &quorum.Transcript{Format: quorum.TranscriptFormat, Instance: g.o.Instance, Created: now, Dev: req.AllowDev, Threshold: set.Threshold,
		Keys: []quorum.TranscriptKey{}, Grants: slices.Clone(req.Grants), Budgets: []quorum.TranscriptBudget{}, Trust: &trust}
	if t.Grants == nil {
		t.Grants = []policy.Grant{}
	}
	step := func(action, detail string) {
		t.Steps = append(t.Steps, quorum.TranscriptStep{N: len(t.Steps) + 1, Time: g.o.Now().UTC(), Action: action, Detail: detail})
	}
	if resumed {
		step("resume", fmt.Sprintf("plan %.16s started %s; %d keys were already created", digest, pl.Started.Format(time.RFC3339), len(pl.Created)))
	}
	for _, o := range set.Officers {
		t.Officers = append(t.Officers, quorum.TranscriptOfficer{Name: o.Name, Fingerprint: o.Fingerprint(), PublicKey: o.PublicKey})
		step("declare-officer", fmt.Sprintf("%s %s", o.Name, o.Fingerprint()))
	}
	step("set-threshold", fmt.Sprintf("%d of %d (dev %t)", set.Threshold, len(set.Officers), req.AllowDev))
	for i, k := range req.Keys {
		if !slices.Contains(pl.Created, k.Name) {
			if err := g.record(ctx, Event{Actor: actor, Action: "ceremony-create-key", Key: k.Name, Detail: k.Purpose.String()}); err != nil {
				return nil, "", err
			}
			if _, err := g.o.Keys.Create(ctx, k.Name, k.Purpose, k.Description); err != nil {
				return nil, "", fmt.Errorf("create key %q: %w", k.Name, err)
			}
			pl.Created = append(pl.Created, k.Name)
			if err := g.putPlan(ctx, pl); err != nil {
				return nil, "", err
			}
		}
		if g.o.faultAfterKey != nil {
			if err := g.o.faultAfterKey(i); err != nil {
				return nil, "", err
			}
		}
		tk, err := g.transcriptKey(ctx, k)
		if err != nil {
			return nil, "", fmt.Errorf("key %q: %w", k.Name, err)
		}
		t.Keys = append(t.Keys, tk)
		step("create-key", fmt.Sprintf("%s %s v%d hsm_id %s in custody %t", tk.Name, tk.Purpose, tk.Version, tk.HSMID, tk.Attributes.Safe()))
	}
	rot, err := g.sealCeremony(ctx, actor, set, req)
	if err != nil {
		return nil, "", err
	}
	if rot != nil {
		defer rot.Abort(ctx)
		if t.Seal = rot.Transcript(); t.Seal != nil {
			step("seal-pin", rot.Step())
		}
	}
	step("fix-trust", fmt.Sprintf("production %t; %d client CAs; %d identities; time-lock %s; proposal ttl %s; freeze %d refusals in %s",
		trust.Production, len(trust.ClientCAs), len(trust.Roles), trust.TimeLock, trust.ProposalTTL, trust.Freeze.Refusals, trust.Freeze.Within))
	for _, gr := range req.Grants {
		pin := ""
		if gr.SPKI != "" {
			pin = " (key pinned)"
		}
		step("install-grant", fmt.Sprintf("%s: %s on %s%s", gr.ID, gr.Identity, gr.Key, pin))
	}
	for _, b := range req.Budgets {
		t.Budgets = append(t.Budgets, quorum.TranscriptBudget{Identity: b.Identity, Key: b.Key, Rate: b.Budget.Rate,
			Burst: b.Budget.Burst, Volume: b.Budget.Volume, Window: b.Budget.Window.String()})
		step("install-budget", fmt.Sprintf("%q on %s: %d per %s", b.Identity, b.Key, b.Budget.Volume, b.Budget.Window))
	}
	tr, err := g.signTranscript(t)
	if err != nil {
		return nil, "", err
	}
	trb, err := json.Marshal(tr)
	if err != nil {
		return nil, "", err
	}

	summary := fmt.Sprintf("ceremony: %d of %d officers, %d keys, %d grants, %d budgets",
		set.Threshold, len(set.Officers), len(t.Keys), len(req.Grants), len(req.Budgets))
	if err := g.record(ctx, Event{Actor: actor, Action: "ceremony", Detail: summary}); err != nil {
		return nil, "", err
	}
	next := newState()
	next.Ceremony, next.Grants, next.Budgets = true, slices.Clone(req.Grants), slices.Clone(req.Budgets)
	next.Trust = &trust
	if next.Grants == nil {
		next.Grants = []policy.Grant{}
	}
	if next.Budgets == nil {
		next.Budgets = []BudgetEntry{}
	}
	// The budgets' spend starts afresh, in the same write.
	lim, err := policy.NewLimiter(g.o.Freeze)
	if err != nil {
		return nil, "", err
	}
	b := g.budgets
	b.mu.Lock()
	defer b.mu.Unlock()
	oldLim, oldRes := b.lim, b.res
	b.lim, b.res = lim, map[policy.Subject]*reservation{}
	if err := b.apply(next.Budgets, g.o.Now()); err != nil {
		b.lim, b.res = oldLim, oldRes
		return nil, "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	ops := []store.Op{store.PutOp(transcriptKey, trb), store.DeleteOp(planKey)}
	if rot != nil {
		ops = append(ops, rot.Ops()...)
	}
	for _, be := range next.Budgets {
		if be.Identity == "" {
			ops = append(ops, b.sharedOps(be.Key)...)
		} else {
			ops = append(ops, b.subjectOps(policy.Subject{Identity: be.Identity, Key: be.Key})...)
		}
	}
	g.ledger = ledger
	ops = dedupe(ops)
	if err := g.commit(ctx, quorum.LedgerState{}, next, ops...); err != nil {
		g.ledger = nil
		b.lim, b.res = oldLim, oldRes
		if errors.Is(err, errStale) {
			// Another replica's write came first: perhaps its ceremony
			// (this replica's watch installs it).
			if st, _, rerr := loadState(ctx, g.o.Store); rerr == nil && st.Ceremony {
				return nil, "", ErrCeremonyDone
			}
			return nil, "", fmt.Errorf("%w: the governance state changed during the ceremony; run it again", ErrUnavailable)
		}
		return nil, "", err
	}
	b.wrote(ops, g.stRev)
	if rot != nil {
		rot.Commit()
	}
	g.transcript = tr
	if err := g.o.Token.MarkCeremony(ctx); err != nil {
		return nil, "", fmt.Errorf("ceremony marker: %w", err)
	}
	if err := g.markProduction(ctx, next); err != nil {
		return nil, "", err
	}
	return tr, summary, nil
}

// sealCeremony replaces the HSM PIN for a sealed start (nil without one).
// It is on the record before the PIN changes.
func (g *Governance) sealCeremony(ctx context.Context, actor Actor, set quorum.OfficerSet, req CeremonyRequest) (PINRotation, error) {
	if g.o.Seal == nil {
		return nil, nil
	}
	if len(req.ShareKeys) != 0 && len(req.ShareKeys) != len(set.Officers) {
		return nil, fmt.Errorf("%w: share keys: %d given for %d officers", ErrInvalid, len(req.ShareKeys), len(set.Officers))
	}
	officers := make([]SealOfficer, len(set.Officers))
	for i, o := range set.Officers {
		officers[i] = SealOfficer{Name: o.Name, SigningKey: o.PublicKey}
		if len(req.ShareKeys) > 0 {
			officers[i].ShareKey = req.ShareKeys[i]
		}
	}
	if err := g.record(ctx, Event{Actor: actor, Action: "ceremony-seal", Detail: fmt.Sprintf("replace the HSM PIN, split %d of %d", set.Threshold, len(set.Officers))}); err != nil {
		return nil, err
	}
	return g.o.Seal.Ceremony(ctx, set.Threshold, officers)
}

// rollback deletes what an unfinished ceremony created and its plan.
func (g *Governance) rollback(ctx context.Context, actor Actor, pl *plan) error {
	if err := g.record(ctx, Event{Actor: actor, Action: "ceremony-rollback",
		Detail: fmt.Sprintf("plan %.16s replaced; discarding %d keys it created", pl.Digest, len(pl.Created))}); err != nil {
		return err
	}
	for len(pl.Created) > 0 {
		name := pl.Created[len(pl.Created)-1]
		if err := g.o.Keys.Discard(ctx, name); err != nil && !errors.Is(err, keys.ErrKeyNotFound) {
			return fmt.Errorf("roll back unfinished ceremony: key %q: %w", name, err)
		}
		pl.Created = pl.Created[:len(pl.Created)-1]
		if err := g.putPlan(ctx, pl); err != nil {
			return err
		}
	}
	if err := store.Delete(context.WithoutCancel(ctx), g.o.Store, planKey); err != nil {
		return fmt.Errorf("%w: ceremony plan: %w", ErrUnavailable, err)
	}
	return nil
}

// transcriptKey describes a created key with the attributes read back from
// the HSM.
func (g *Governance) transcriptKey(ctx context.Context, k CeremonyKey) (quorum.TranscriptKey, error) {
	e, err := g.o.Keys.Get(k.Name)
	if err != nil {
		return quorum.TranscriptKey{}, err
	}
	if e.Key.Purpose != k.Purpose {
		return quorum.TranscriptKey{}, fmt.Errorf("%w: exists with purpose %s, the ceremony declares %s", keys.ErrKeyExists, e.Key.Purpose, k.Purpose)
	}
	v, _ := e.Key.Version(e.Key.Primary)
	a, err := g.o.Token.KeyAttributes(ctx, e, v.Number)
	if err != nil {
		return quorum.TranscriptKey{}, err
	}
	return quorum.TranscriptKey{Name: k.Name, Purpose: k.Purpose.String(), Version: int(v.Number), HSMID: hex.EncodeToString(v.HSMID), Attributes: a}, nil
}

func (g *Governance) signTranscript(t *quorum.Transcript) (*StoredTranscript, error) {
	doc, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(doc)
	sig, err := g.o.Signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: sign transcript: %w", ErrUnavailable, err)
	}
	auditDER, err := x509.MarshalPKIXPublicKey(g.o.Signer.Public())
	if err != nil {
		return nil, err
	}
	return &StoredTranscript{JSON: doc, Text: t.Text(), Signature: sig, AuditDER: auditDER}, nil
}

// Transcript returns the signed ceremony transcript.
func (g *Governance) Transcript() (*StoredTranscript, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.transcript == nil {
		return nil, fmt.Errorf("%w: no ceremony transcript (the ceremony has not run)", ErrNotFound)
	}
	return g.transcript, nil
}
