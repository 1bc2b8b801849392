package hsm

import (
	"fmt"

	"github.com/custodyhq/custody/internal/pkcs11uri"
)

// URI is an RFC 7512 PKCS#11 URI naming the token custodyd holds its keys
// on (package pkcs11uri, the one parser: custodyctl names officer keys with
// it too). A PIN is never taken from a URI.
type URI = pkcs11uri.URI

// ParseURI parses a token URI. Its errors wrap ErrInvalidInput.
func ParseURI(s string) (URI, error) {
	u, err := pkcs11uri.Parse(s)
	if err != nil {
		return u, fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	return u, nil
}
