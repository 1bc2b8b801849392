package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/keys/hsmtoken"
	"github.com/custodyhq/custody/internal/quorum"
)

// CeremonyMarkerLabel labels a token object that exists once a key ceremony
// has completed. The store's records are MAC'd but a deleted record leaves
// no trace in the store itself; the marker on the token does, so deleting
// the governance state cannot reopen the ceremony.
const CeremonyMarkerLabel = "custody:ceremony:v1"

// govToken is the token as governance uses it (governance.Token).
type govToken struct{ m *hsm.Module }

// CeremonyMarked reports false only when the token definitely holds no
// marker: an HSM error, or a second marker object planted by someone with
// the PIN, is an error that stops start-up.
func (t govToken) CeremonyMarked(ctx context.Context) (bool, error) {
	_, err := t.m.FindByLabel(ctx, hsm.KindHMACSHA256, CeremonyMarkerLabel)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, hsm.ErrNotFound):
		return false, nil
	}
	return false, err
}

// MarkCeremony creates the marker unless it exists.
func (t govToken) MarkCeremony(ctx context.Context) error {
	marked, err := t.CeremonyMarked(ctx)
	if err != nil || marked {
		return err
	}
	if _, _, err := t.m.CreateKey(ctx, hsm.KindHMACSHA256, CeremonyMarkerLabel); err != nil && !errors.Is(err, hsm.ErrExists) {
		return fmt.Errorf("ceremony marker: %w", err)
	}
	return nil
}

// KeyAttributes reads a key version's custody attributes back from the token.
func (t govToken) KeyAttributes(ctx context.Context, e *keys.Entry, version uint32) (quorum.TranscriptAttr, error) {
	o, err := e.Object(version)
	if err != nil {
		return quorum.TranscriptAttr{}, err
	}
	a, err := t.m.Attributes(ctx, hsmtoken.Key(o))
	if err != nil {
		return quorum.TranscriptAttr{}, err
	}
	return quorum.TranscriptAttr{Token: a.Token, Private: a.Private, Sensitive: a.Sensitive, AlwaysSensitive: a.AlwaysSensitive,
		Extractable: a.Extractable, NeverExtractable: a.NeverExtractable, Local: a.Local, Modifiable: a.Modifiable,
		Unverified: a.Unverified.Strings()}, nil
}
