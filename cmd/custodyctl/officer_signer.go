package main

import (
	"crypto"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/ThalesGroup/crypto11"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	"github.com/custodyhq/custody/internal/quorum"
)

// signerFlags select the officer's signing key: a key file (optionally
// passphrase-protected) or a key pair on a PKCS#11 token (a smartcard, or a
// SoftHSM token standing in for one), used through crypto11.
//
// crypto11's Close calls C_Finalize, which ends every other PKCS#11 user in
// the process; custodyctl never has another, which is why crypto11 is used
// here and nowhere in the server.
type signerFlags struct {
	keyFile string
	pass    passphraseFlags
	uri     string
	pinEnv  string
}

func (s *signerFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.keyFile, "officer-key", "", "officer private key file, as written by officer keygen")
	s.pass.register(cmd, "")
	f.StringVar(&s.uri, "officer-pkcs11", "", `officer key pair on a PKCS#11 token: "pkcs11:token=LABEL;object=KEYLABEL?module-path=/path/lib.so" (id=%xx… also selects)`)
	f.StringVar(&s.pinEnv, "officer-pin-env", "", "environment variable holding the token's user PIN")
}

// officerSigner is a loaded officer key; Close releases a token.
type officerSigner struct {
	crypto.Signer
	close func() error
}

func (o *officerSigner) Close() error {
	if o.close == nil {
		return nil
	}
	return o.close()
}

// load opens the selected key. The caller must Close it.
func (s *signerFlags) load() (*officerSigner, error) {
	switch {
	case s.keyFile != "" && s.uri != "":
		return nil, usageErrorf("give --officer-key or --officer-pkcs11, not both")
	case s.keyFile != "":
		pass, err := s.pass.read(false)
		if err != nil {
			return nil, err
		}
		k, err := loadOfficerKeyFile(s.keyFile, pass)
		clear(pass)
		if err != nil {
			return nil, err
		}
		return &officerSigner{Signer: k}, nil
	case s.uri != "":
		return loadPKCS11Signer(s.uri, s.pinEnv)
	}
	return nil, usageErrorf("an officer key is required: --officer-key FILE or --officer-pkcs11 URI --officer-pin-env VAR")
}

// pkcs11Selector is what an officer's PKCS#11 URI selects (RFC 7512 subset).
type pkcs11Selector struct {
	modulePath            string
	token, serial, object string
	slot                  *int
	id                    []byte
}

// parseOfficerURI parses the RFC 7512 subset custodyctl accepts. A PIN is
// never taken from the URI: pin-value and pin-source are refused.
func parseOfficerURI(s string) (pkcs11Selector, error) {
	var sel pkcs11Selector
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return sel, fmt.Errorf("pkcs11 uri must start with \"pkcs11:\"")
	}
	path, query, _ := strings.Cut(rest, "?")
	attrs := map[string]string{}
	for _, part := range append(strings.Split(path, ";"), strings.Split(query, "&")...) {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return sel, fmt.Errorf("pkcs11 uri: %q has no value", k)
		}
		val, err := url.PathUnescape(v)
		if err != nil {
			return sel, fmt.Errorf("pkcs11 uri: %s: %v", k, err)
		}
		if _, dup := attrs[k]; dup {
			return sel, fmt.Errorf("pkcs11 uri: %s given twice", k)
		}
		attrs[k] = val
	}
	for k, v := range attrs {
		switch k {
		case "module-path":
			sel.modulePath = v
		case "token":
			sel.token = v
		case "serial":
			sel.serial = v
		case "slot-id":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return sel, fmt.Errorf("pkcs11 uri: slot-id %q is not a number", v)
			}
			sel.slot = &n
		case "object":
			sel.object = v
		case "id":
			sel.id = []byte(v)
		case "type":
			if v != "private" {
				return sel, fmt.Errorf("pkcs11 uri: type must be private")
			}
		case "pin-value", "pin-source":
			return sel, fmt.Errorf("pkcs11 uri: %s is refused; give the PIN with --officer-pin-env", k)
		case "manufacturer", "model", "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer":
			// Accepted and ignored: informational selectors.
		default:
			return sel, fmt.Errorf("pkcs11 uri: unknown attribute %q", k)
		}
	}
	switch {
	case sel.modulePath == "":
		return sel, fmt.Errorf("pkcs11 uri: module-path is required")
	case sel.object == "" && sel.id == nil:
		return sel, fmt.Errorf("pkcs11 uri: object= or id= must select the key pair")
	}
	n := 0
	for _, set := range []bool{sel.token != "", sel.serial != "", sel.slot != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return sel, fmt.Errorf("pkcs11 uri: select the token with exactly one of token=, serial=, slot-id=")
	}
	return sel, nil
}

// loadPKCS11Signer logs in to the token and finds exactly one key pair.
func loadPKCS11Signer(uri, pinEnv string) (*officerSigner, error) {
	sel, err := parseOfficerURI(uri)
	if err != nil {
		return nil, usageErrorf("--officer-pkcs11: %v", err)
	}
	if pinEnv == "" {
		return nil, usageErrorf("--officer-pkcs11 needs --officer-pin-env VAR naming the variable that holds the PIN")
	}
	pin, ok := os.LookupEnv(pinEnv)
	if !ok || pin == "" {
		return nil, usageErrorf("environment variable %s (the token PIN) is not set", pinEnv)
	}
	ctx, err := crypto11.Configure(&crypto11.Config{
		Path: sel.modulePath, TokenLabel: sel.token, TokenSerial: sel.serial, SlotNumber: sel.slot,
		Pin: pin, MaxSessions: 2,
	})
	if err != nil {
		// crypto11's messages name the module, token and PKCS#11 code, not the PIN.
		return nil, localError(codes.Unavailable, fmt.Errorf("open officer token: %v", err))
	}
	var label []byte
	if sel.object != "" {
		label = []byte(sel.object)
	}
	pairs, err := ctx.FindKeyPairs(sel.id, label)
	if err == nil && len(pairs) != 1 {
		err = fmt.Errorf("%d key pairs match %s; the uri must select exactly one", len(pairs), selectorText(sel))
	}
	if err != nil {
		_ = ctx.Close()
		return nil, localError(codes.NotFound, fmt.Errorf("officer key on token: %w", err))
	}
	signer := pairs[0]
	if _, err := quorum.NewOfficer("check", signer.Public()); err != nil {
		_ = ctx.Close()
		return nil, localError(codes.InvalidArgument, fmt.Errorf("officer key on token: %w (tokens hold ECDSA P-256 officer keys)", err))
	}
	return &officerSigner{Signer: signer, close: ctx.Close}, nil
}

func selectorText(sel pkcs11Selector) string {
	var p []string
	if sel.object != "" {
		p = append(p, "object="+sel.object)
	}
	if sel.id != nil {
		p = append(p, fmt.Sprintf("id=%x", sel.id))
	}
	return strings.Join(p, ",")
}

// errNotOfficer reports a signing key that belongs to no current officer.
var errNotOfficer = errors.New("this key is not the key of any current officer")
