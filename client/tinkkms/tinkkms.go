// Package tinkkms lets Tink use Custody as its key management service: a
// registry.KMSClient for key URIs of the form custody://<key-name>, whose
// AEADs encrypt and decrypt inside custodyd with that key (which never
// leaves the HSM). Use it as the key-encryption AEAD of Tink's envelope
// encryption (aead.NewKMSEnvelopeAEAD2), so that Custody wraps only Tink's
// small data keys.
//
// Tink's associated data becomes the Custody encryption context
// {"tink.ad": base64(ad)} (no entry when ad is empty), so custodyd binds,
// checks and audits it like any other context. Ciphertexts are custodyd's
// own envelopes and decrypt only with the same key and associated data.
package tinkkms

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/tink-crypto/tink-go/v2/core/registry"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/custodyhq/custody/client"
)

// URIPrefix starts every Custody key URI: custody://<key-name>.
const URIPrefix = "custody://"

// ContextKey is the encryption-context entry that carries Tink's
// associated data, base64 (standard, padded) encoded.
const ContextKey = "tink.ad"

// maxKeyName is custodyd's limit on key names.
const maxKeyName = 128

// ErrUnsupportedURI means a key URI is not custody://<key-name> or is
// outside the client's prefix.
var ErrUnsupportedURI = errors.New("unsupported key uri")

// KMSClient is a Tink registry.KMSClient backed by a Custody client.
type KMSClient struct {
	c      *client.Client
	prefix string
}

var (
	_ registry.KMSClient   = (*KMSClient)(nil)
	_ tink.AEAD            = (*AEAD)(nil)
	_ tink.AEADWithContext = (*AEAD)(nil)
)

// New returns a KMSClient that serves key URIs starting with uriPrefix,
// which must start with URIPrefix: "custody://" serves every key,
// "custody://payments" only URIs with that prefix. The caller keeps
// ownership of c and closes it when done.
func New(c *client.Client, uriPrefix string) (*KMSClient, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil client", client.ErrInvalidArgument)
	}
	if !strings.HasPrefix(uriPrefix, URIPrefix) {
		return nil, fmt.Errorf("%w: prefix %q does not start with %q", ErrUnsupportedURI, uriPrefix, URIPrefix)
	}
	return &KMSClient{c: c, prefix: uriPrefix}, nil
}

// Supported reports whether keyURI is custody://<key-name> with a valid
// key name and within the client's prefix.
func (k *KMSClient) Supported(keyURI string) bool {
	_, err := k.keyName(keyURI)
	return err == nil
}

// GetAEAD returns an AEAD that encrypts and decrypts with the key named in
// keyURI, inside custodyd.
func (k *KMSClient) GetAEAD(keyURI string) (tink.AEAD, error) {
	name, err := k.keyName(keyURI)
	if err != nil {
		return nil, err
	}
	return &AEAD{c: k.c, keyName: name}, nil
}

func (k *KMSClient) keyName(keyURI string) (string, error) {
	if !strings.HasPrefix(keyURI, k.prefix) {
		return "", fmt.Errorf("%w: %q is outside %q", ErrUnsupportedURI, keyURI, k.prefix)
	}
	name := strings.TrimPrefix(keyURI, URIPrefix)
	if !validKeyName(name) {
		return "", fmt.Errorf("%w: %q: key name must be 1..%d of [a-zA-Z0-9._-], not starting with '.' or '-'", ErrUnsupportedURI, keyURI, maxKeyName)
	}
	return name, nil
}

// validKeyName mirrors custodyd's key name rule, so that a URI this client
// accepts names a key custodyd could have.
func validKeyName(name string) bool {
	if name == "" || len(name) > maxKeyName || name[0] == '.' || name[0] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// AEAD is a tink.AEAD whose operations run inside custodyd with one key.
// Calls without a context are bounded by the client's Config.Timeout.
type AEAD struct {
	c       *client.Client
	keyName string
}

// KeyName returns the Custody key this AEAD uses.
func (a *AEAD) KeyName() string { return a.keyName }

// Encrypt encrypts plaintext with associatedData bound as context.
func (a *AEAD) Encrypt(plaintext, associatedData []byte) ([]byte, error) {
	return a.EncryptWithContext(context.Background(), plaintext, associatedData)
}

// Decrypt decrypts a ciphertext made by Encrypt with the same associated data.
func (a *AEAD) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	return a.DecryptWithContext(context.Background(), ciphertext, associatedData)
}

// EncryptWithContext is Encrypt with a caller's context.
func (a *AEAD) EncryptWithContext(ctx context.Context, plaintext, associatedData []byte) ([]byte, error) {
	ct, err := a.c.Encrypt(ctx, a.keyName, plaintext, adContext(associatedData))
	if err != nil {
		return nil, fmt.Errorf("custody encrypt with %s: %w", a.keyName, err)
	}
	return ct, nil
}

// DecryptWithContext is Decrypt with a caller's context.
func (a *AEAD) DecryptWithContext(ctx context.Context, ciphertext, associatedData []byte) ([]byte, error) {
	pt, err := a.c.Decrypt(ctx, a.keyName, ciphertext, adContext(associatedData))
	if err != nil {
		return nil, fmt.Errorf("custody decrypt with %s: %w", a.keyName, err)
	}
	return pt, nil
}

// adContext maps Tink's associated data to an encryption context. Empty and
// nil associated data are the same to an AEAD, and map to no entry.
func adContext(ad []byte) map[string]string {
	if len(ad) == 0 {
		return nil
	}
	return map[string]string{ContextKey: base64.StdEncoding.EncodeToString(ad)}
}
