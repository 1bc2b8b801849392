package main

import (
	"crypto"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/ThalesGroup/crypto11"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	"github.com/custodyhq/custody/internal/pkcs11uri"
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

// parseOfficerURI parses an officer key's PKCS#11 URI with the one parser
// custodyd uses for its own token (internal/pkcs11uri: no PIN in a URI,
// exactly one token selector, nothing unknown or repeated), and requires an
// object= or id= selecting the key pair and, if given, type=private.
func parseOfficerURI(s string) (pkcs11uri.URI, error) {
	u, err := pkcs11uri.Parse(s)
	if err != nil {
		return u, err
	}
	if u.Object == "" && u.ID == nil {
		return u, fmt.Errorf("pkcs11 uri: object= or id= must select the key pair")
	}
	if u.Type != "" && u.Type != "private" {
		return u, fmt.Errorf("pkcs11 uri: type must be private")
	}
	return u, nil
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
	cfg := &crypto11.Config{Path: sel.ModulePath, TokenLabel: sel.Token, TokenSerial: sel.Serial, Pin: pin, MaxSessions: 2}
	if sel.SlotID != nil {
		slot := int(*sel.SlotID)
		cfg.SlotNumber = &slot
	}
	ctx, err := crypto11.Configure(cfg)
	if err != nil {
		// crypto11's messages name the module, token and PKCS#11 code, not the PIN.
		return nil, localError(codes.Unavailable, fmt.Errorf("open officer token: %v", err))
	}
	var label []byte
	if sel.Object != "" {
		label = []byte(sel.Object)
	}
	pairs, err := ctx.FindKeyPairs(sel.ID, label)
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

func selectorText(sel pkcs11uri.URI) string {
	var p []string
	if sel.Object != "" {
		p = append(p, "object="+sel.Object)
	}
	if sel.ID != nil {
		p = append(p, fmt.Sprintf("id=%x", sel.ID))
	}
	return strings.Join(p, ",")
}

// errNotOfficer reports a signing key that belongs to no current officer.
var errNotOfficer = errors.New("this key is not the key of any current officer")
