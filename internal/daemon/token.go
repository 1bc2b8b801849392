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

// ProductionMarkerLabel labels a token object that exists once a production
// key ceremony has completed: a start with dev: true on such a token is
// refused right after login, before the store is read.
const ProductionMarkerLabel = "custody:ceremony:production:v1"

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

// ProductionMarked reports whether the token has had a production key
// ceremony. Like CeremonyMarked, only a definite "not found" is false.
func (t govToken) ProductionMarked(ctx context.Context) (bool, error) {
	_, err := t.m.FindByLabel(ctx, hsm.KindHMACSHA256, ProductionMarkerLabel)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, hsm.ErrNotFound):
		return false, nil
	}
	return false, err
}

// MarkProduction creates the production marker unless it exists
// (governance.ProductionMarker).
func (t govToken) MarkProduction(ctx context.Context) error {
	marked, err := t.ProductionMarked(ctx)
	if err != nil || marked {
		return err
	}
	if _, _, err := t.m.CreateKey(ctx, hsm.KindHMACSHA256, ProductionMarkerLabel); err != nil && !errors.Is(err, hsm.ErrExists) {
		return fmt.Errorf("production marker: %w", err)
	}
	return nil
}

// refuseDevOnProduction refuses dev: true on a token whose production key
// ceremony has run (a dev vault skips the time-lock floor, creates keys
// without proposals and accepts a single officer).
func refuseDevOnProduction(ctx context.Context, m *hsm.Module) error {
	marked, err := govToken{m: m}.ProductionMarked(ctx)
	if err != nil {
		return fmt.Errorf("hsm: cannot tell whether this token has had a production key ceremony: %w; refusing dev: true", err)
	}
	if marked {
		return fmt.Errorf("dev: true is refused: this HSM token has had a production key ceremony (token object %q); "+
			"remove dev from the configuration (a development vault needs a token of its own)", ProductionMarkerLabel)
	}
	return nil
}
