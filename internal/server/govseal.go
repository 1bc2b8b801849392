package server

import (
	"context"
	"errors"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/sealsvc"
)

// SealHooks is the vault's sealed start (internal/sealsvc): the key
// ceremony replaces the installer's PIN with a random one split among the
// officers, and a rekey-seal proposal makes a new PIN and new shares.
type SealHooks interface {
	Ceremony(ctx context.Context, threshold int, officers []sealsvc.CeremonyOfficer) (*sealsvc.Rotation, error)
	StartRekey(ctx context.Context, proposalID string, officers quorum.OfficerSet, pl quorum.RekeySeal) error
}

// sealCeremony runs the ceremony's PIN rotation (nil without SealHooks).
// The caller defers Abort on the result and calls Commit once the ceremony
// is durable.
func (g *Governance) sealCeremony(ctx context.Context, set quorum.OfficerSet, req *custodyv1.InitCeremonyRequest) (*sealsvc.Rotation, error) {
	if g.o.Seal == nil {
		return nil, nil
	}
	officers := make([]sealsvc.CeremonyOfficer, len(set.Officers))
	for i, o := range set.Officers {
		officers[i] = sealsvc.CeremonyOfficer{Name: o.Name, SigningKey: o.PublicKey, ShareKey: req.GetOfficers()[i].GetSharePublicKeyDer()}
	}
	return g.o.Seal.Ceremony(ctx, set.Threshold, officers)
}

// rekeySeal executes a rekey-seal proposal.
func (g *Governance) rekeySeal(ctx context.Context, id string, pl quorum.RekeySeal) error {
	if g.o.Seal == nil {
		return errors.New("this custodyd has no sealed start")
	}
	return g.o.Seal.StartRekey(ctx, id, g.ledger.Officers(), pl)
}
