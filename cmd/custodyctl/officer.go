package main

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/argon2"
	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/internal/quorum"
	"github.com/custodyhq/custody/internal/seal"
)

// Officer key files.
//
// A plain officer key is a "PRIVATE KEY" PEM block (PKCS#8). An encrypted one
// is a "CUSTODY ENCRYPTED OFFICER KEY" block:
//
//	-----BEGIN CUSTODY ENCRYPTED OFFICER KEY-----
//	KDF: argon2id
//	KDF-Params: v=19,t=3,m=65536,p=4
//	Salt: <base64, 16 bytes>
//	Cipher: AES-256-GCM
//	Nonce: <base64, 12 bytes>
//
//	<base64 of AES-256-GCM ciphertext||tag of the PKCS#8 DER>
//	-----END CUSTODY ENCRYPTED OFFICER KEY-----
//
// The AES key is argon2id(passphrase, salt, t, m KiB, p, 32 bytes); the GCM
// additional data is "custody-officer-key-v1\n" || KDF || "\n" ||
// KDF-Params || "\n" || salt, so no header can be altered without the
// decryption failing. Parameters are bounded on reading, so a crafted file
// cannot make custodyctl spend gigabytes.
const (
	pemPrivateKey      = "PRIVATE KEY"
	pemPublicKey       = "PUBLIC KEY"
	pemEncryptedKey    = "CUSTODY ENCRYPTED OFFICER KEY"
	officerKeyAADLabel = "custody-officer-key-v1\n"

	argonTime    = 3
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 4

	minPassphraseLen = 8
)

// Officer key errors.
var (
	// errWrongPassphrase reports an encrypted key that does not decrypt:
	// wrong passphrase, or a damaged or edited file.
	errWrongPassphrase = errors.New("officer key does not decrypt: wrong passphrase or damaged file")
	// errKeyFormat reports a file that is not an officer key custodyctl reads.
	errKeyFormat = errors.New("not an officer key file")
)

func (a *app) officerCommand() *cobra.Command {
	return groupCommand("officer", "Create and inspect security officers' signing and share keys",
		a.officerKeygenCommand(), a.officerShareKeygenCommand(), a.officerSharePubCommand(), a.officerShowCommand(), a.officerListCommand())
}

func (a *app) officerKeygenCommand() *cobra.Command {
	var out, typ string
	var pass passphraseFlags
	cmd := &cobra.Command{
		Use:   "keygen --out FILE",
		Short: "Generate an officer's signing key (FILE, FILE.pub) and share key (FILE.share, FILE.share.pub)",
		Long: `Generates an Ed25519 or ECDSA P-256 officer signing key, and a separate
P-256 share key to which custodyd encrypts the officer's share of the HSM
PIN (sealed start). FILE and FILE.share hold the private keys (PKCS#8 PEM,
or encrypted with argon2id + AES-256-GCM when a passphrase is given, the
same passphrase for both) and are created with mode 0600; FILE.pub and
FILE.share.pub hold the public keys to put in ceremony.yaml (public_key and
share_public_key). Existing files are never overwritten. Prints both
fingerprints: compare them with what the ceremony transcript shows.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageErrorf("--out is required")
			}
			for _, p := range []string{out + shareSuffix, out + shareSuffix + ".pub"} {
				if _, err := os.Lstat(p); err == nil {
					return localError(codes.AlreadyExists, fmt.Errorf("%s exists; refusing to overwrite it", p))
				}
			}
			passphrase, err := pass.read(true)
			if err != nil {
				return err
			}
			defer clear(passphrase)
			signer, err := generateOfficerKey(typ)
			if err != nil {
				return err
			}
			fp, err := writeOfficerKey(out, signer, passphrase)
			if err != nil {
				return err
			}
			sfp, err := writeShareKey(out+shareSuffix, passphrase)
			if err != nil {
				_ = os.Remove(out)
				_ = os.Remove(out + ".pub")
				return err
			}
			return a.emitValue(map[string]string{"key_file": out, "public_key_file": out + ".pub", "fingerprint": fp,
				"share_key_file": out + shareSuffix, "share_public_key_file": out + shareSuffix + ".pub", "share_fingerprint": sfp},
				func(w io.Writer) {
					fmt.Fprintf(w, "private key: %s\npublic key:  %s.pub\nfingerprint: %s\n", out, out, fp)
					fmt.Fprintf(w, "share key:   %s%s (public: %s%s.pub)\nshare key fingerprint: %s\n", out, shareSuffix, out, shareSuffix, sfp)
				})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "private key file to create; the public key goes to FILE.pub")
	cmd.Flags().StringVar(&typ, "type", "ed25519", "key type: ed25519 or ecdsa-p256")
	pass.register(cmd, "")
	return cmd
}

func (a *app) officerShareKeygenCommand() *cobra.Command {
	var out string
	var pass passphraseFlags
	cmd := &cobra.Command{
		Use:   "share-keygen --out FILE",
		Short: "Generate only a share key (FILE, mode 0600, and FILE.pub), e.g. for an officer who has a signing key",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageErrorf("--out is required")
			}
			passphrase, err := pass.read(true)
			if err != nil {
				return err
			}
			defer clear(passphrase)
			fp, err := writeShareKey(out, passphrase)
			if err != nil {
				return err
			}
			return a.emitValue(map[string]string{"share_key_file": out, "share_public_key_file": out + ".pub", "share_fingerprint": fp},
				func(w io.Writer) { fmt.Fprintf(w, "share key:   %s (public: %s.pub)\nfingerprint: %s\n", out, out, fp) })
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "share key file to create; the public key goes to FILE.pub")
	pass.register(cmd, "")
	return cmd
}

func (a *app) officerSharePubCommand() *cobra.Command {
	var out, pinEnv string
	var sk shareKeyFlags
	cmd := &cobra.Command{
		Use:   "share-pub --share-pkcs11 URI --officer-pin-env VAR --out FILE.pub",
		Short: "Write the public half of a share key kept on a PKCS#11 token (P-256, CKA_DERIVE), for ceremony.yaml",
		Long: `An officer whose keys live on a token makes the share key there, e.g.
  pkcs11-tool --module LIB --login --keypairgen --key-type EC:prime256v1 --usage-derive --label alice-share
and writes its public half with this command. The private half never leaves
the token: custodyctl unseal asks the token to do the key agreement.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" || sk.uri == "" {
				return usageErrorf("--share-pkcs11 and --out are required")
			}
			k, err := openTokenShareKey(sk.uri, pinEnv)
			if err != nil {
				return err
			}
			defer k.Close()
			der, err := seal.MarshalPublicKey(k.PublicKey())
			if err != nil {
				return localError(codes.Internal, err)
			}
			if err := createFile(out, pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der}), 0o644); err != nil {
				return err
			}
			fp := seal.Fingerprint(der)
			return a.emitValue(map[string]string{"share_public_key_file": out, "share_fingerprint": fp},
				func(w io.Writer) { fmt.Fprintf(w, "share public key: %s\nfingerprint:      %s\n", out, fp) })
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "public key file to create (PKIX PEM)")
	cmd.Flags().StringVar(&sk.uri, "share-pkcs11", "", "the share key pair on the token")
	cmd.Flags().StringVar(&pinEnv, "officer-pin-env", "", "environment variable holding the token's user PIN")
	return cmd
}

func (a *app) officerShowCommand() *cobra.Command {
	var pub string
	cmd := &cobra.Command{
		Use:   "show --pub FILE",
		Short: "Print an officer public key's type and fingerprint",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pub == "" {
				return usageErrorf("--pub is required")
			}
			o, err := readOfficerPublicKey(pub)
			if err != nil {
				return err
			}
			typ := keyTypeName(o.PublicKey)
			return a.emitValue(map[string]string{"type": typ, "fingerprint": o.Fingerprint()}, func(w io.Writer) {
				fmt.Fprintf(w, "type:        %s\nfingerprint: %s\n", typ, o.Fingerprint())
			})
		},
	}
	cmd.Flags().StringVar(&pub, "pub", "", "public key file (PKIX PEM), as written by officer keygen")
	return cmd
}

func (a *app) officerListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the vault's officers, their key fingerprints and M",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.governance(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.ListOfficers(ctx, &custodyv1.ListOfficersRequest{})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				fmt.Fprintf(w, "threshold: %d of %d\n", resp.GetThreshold(), len(resp.GetOfficers()))
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tTYPE\tFINGERPRINT")
				for _, o := range resp.GetOfficers() {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", o.GetName(), keyTypeName(o.GetPublicKeyDer()), o.GetFingerprint())
				}
				_ = tw.Flush()
			})
		},
	}
}

// passphraseFlags select where a passphrase comes from: a file or an
// environment variable, never a flag value.
type passphraseFlags struct {
	file, env string
}

func (p *passphraseFlags) register(cmd *cobra.Command, prefix string) {
	cmd.Flags().StringVar(&p.file, prefix+"passphrase-file", "", "read the officer key passphrase from this file (first line)")
	cmd.Flags().StringVar(&p.env, prefix+"passphrase-env", "", "read the officer key passphrase from this environment variable")
}

// read returns the passphrase, or nil when none was asked for. For a new
// key (creating) it enforces a minimum length.
func (p *passphraseFlags) read(creating bool) ([]byte, error) {
	var pass []byte
	switch {
	case p.file != "" && p.env != "":
		return nil, usageErrorf("give the passphrase by file or by environment variable, not both")
	case p.file != "":
		b, err := os.ReadFile(p.file)
		if err != nil {
			return nil, localError(codes.FailedPrecondition, fmt.Errorf("read passphrase file: %w", err))
		}
		line, _, _ := strings.Cut(string(b), "\n")
		pass = []byte(strings.TrimSuffix(line, "\r"))
	case p.env != "":
		v, ok := os.LookupEnv(p.env)
		if !ok {
			return nil, usageErrorf("environment variable %s is not set", p.env)
		}
		pass = []byte(v)
	default:
		return nil, nil
	}
	if len(pass) == 0 {
		return nil, usageErrorf("the passphrase is empty")
	}
	if creating && len(pass) < minPassphraseLen {
		return nil, usageErrorf("the passphrase must be at least %d characters", minPassphraseLen)
	}
	return pass, nil
}

// generateOfficerKey makes a new officer key of the named type.
func generateOfficerKey(typ string) (crypto.Signer, error) {
	switch typ {
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case "ecdsa-p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	return nil, usageErrorf("--type must be ed25519 or ecdsa-p256, not %q", typ)
}

// writeOfficerKey writes the private key to path (0600) and the public key
// to path.pub, refusing to replace either, and returns the fingerprint. On
// failure it leaves neither file behind.
func writeOfficerKey(path string, signer crypto.Signer, passphrase []byte) (string, error) {
	o, err := quorum.NewOfficer("new", signer.Public())
	if err != nil {
		return "", localError(codes.Internal, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return "", localError(codes.Internal, fmt.Errorf("encode private key: %w", err))
	}
	defer clear(der)
	block := &pem.Block{Type: pemPrivateKey, Bytes: der}
	if passphrase != nil {
		if block, err = sealOfficerKey(der, passphrase); err != nil {
			return "", localError(codes.Internal, err)
		}
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: o.PublicKey})
	for _, p := range []string{path, path + ".pub"} {
		if _, err := os.Lstat(p); err == nil {
			return "", localError(codes.AlreadyExists, fmt.Errorf("%s exists; refusing to overwrite it", p))
		}
	}
	if err := createFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", err
	}
	if err := createFile(path+".pub", pubPEM, 0o644); err != nil {
		_ = os.Remove(path)
		return "", err
	}
	return o.Fingerprint(), nil
}

// createFile writes data to a new file with mode perm (exactly, whatever
// the umask), failing if the file exists.
func createFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return localError(codes.AlreadyExists, fmt.Errorf("%s exists; refusing to overwrite it", path))
		}
		return localError(codes.FailedPrecondition, err)
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chmod(perm)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return localError(codes.FailedPrecondition, fmt.Errorf("write %s: %w", path, werr))
	}
	return nil
}

type argonParams struct {
	time, memory uint32
	threads      uint8
}

func (p argonParams) String() string {
	return fmt.Sprintf("v=%d,t=%d,m=%d,p=%d", argon2.Version, p.time, p.memory, p.threads)
}

// parseArgonParams reads KDF-Params, refusing values outside sane bounds.
func parseArgonParams(s string) (argonParams, error) {
	var p argonParams
	seen := map[string]bool{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil || seen[k] {
			return p, fmt.Errorf("%w: bad KDF-Params %q", errKeyFormat, s)
		}
		seen[k] = true
		switch k {
		case "v":
			if n != argon2.Version {
				return p, fmt.Errorf("%w: unsupported argon2 version %d", errKeyFormat, n)
			}
		case "t":
			p.time = uint32(n)
		case "m":
			p.memory = uint32(n)
		case "p":
			p.threads = uint8(min(n, 255))
		default:
			return p, fmt.Errorf("%w: unknown KDF parameter %q", errKeyFormat, k)
		}
	}
	if len(seen) != 4 || p.time < 1 || p.time > 16 || p.memory < 8*1024 || p.memory > 1024*1024 || p.threads < 1 || p.threads > 16 {
		return p, fmt.Errorf("%w: KDF-Params %q out of range", errKeyFormat, s)
	}
	return p, nil
}

func officerKeyAAD(kdf, params string, salt []byte) []byte {
	return append([]byte(officerKeyAADLabel+kdf+"\n"+params+"\n"), salt...)
}

func officerKeyAEAD(passphrase, salt []byte, p argonParams) (cipher.AEAD, error) {
	k := argon2.IDKey(passphrase, salt, p.time, p.memory, p.threads, 32)
	defer clear(k)
	blk, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// sealOfficerKey encrypts a PKCS#8 DER key under a passphrase.
func sealOfficerKey(der, passphrase []byte) (*pem.Block, error) {
	p := argonParams{time: argonTime, memory: argonMemory, threads: argonThreads}
	salt := make([]byte, 16)
	nonce := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	aead, err := officerKeyAEAD(passphrase, salt, p)
	if err != nil {
		return nil, err
	}
	ct := aead.Seal(nil, nonce, der, officerKeyAAD("argon2id", p.String(), salt))
	return &pem.Block{Type: pemEncryptedKey, Headers: map[string]string{
		"KDF":        "argon2id",
		"KDF-Params": p.String(),
		"Salt":       base64.StdEncoding.EncodeToString(salt),
		"Cipher":     "AES-256-GCM",
		"Nonce":      base64.StdEncoding.EncodeToString(nonce),
	}, Bytes: ct}, nil
}

// openOfficerKey decrypts an encrypted officer key block to PKCS#8 DER.
func openOfficerKey(b *pem.Block, passphrase []byte) ([]byte, error) {
	h := b.Headers
	if h["KDF"] != "argon2id" || h["Cipher"] != "AES-256-GCM" || len(h) != 5 {
		return nil, fmt.Errorf("%w: unsupported encryption headers", errKeyFormat)
	}
	p, err := parseArgonParams(h["KDF-Params"])
	if err != nil {
		return nil, err
	}
	salt, err1 := base64.StdEncoding.DecodeString(h["Salt"])
	nonce, err2 := base64.StdEncoding.DecodeString(h["Nonce"])
	if err1 != nil || err2 != nil || len(salt) < 16 || len(salt) > 64 || len(nonce) != 12 {
		return nil, fmt.Errorf("%w: bad salt or nonce", errKeyFormat)
	}
	aead, err := officerKeyAEAD(passphrase, salt, p)
	if err != nil {
		return nil, err
	}
	der, err := aead.Open(nil, nonce, b.Bytes, officerKeyAAD("argon2id", h["KDF-Params"], salt))
	if err != nil {
		return nil, errWrongPassphrase
	}
	return der, nil
}

// loadOfficerKeyFile reads an officer private key (plain or encrypted) and
// checks it is a type officers may use. Errors name the file, never the key.
func loadOfficerKeyFile(path string, passphrase []byte) (crypto.Signer, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, localError(codes.FailedPrecondition, fmt.Errorf("read officer key: %w", err))
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w: no PEM block", path, errKeyFormat))
	}
	der := b.Bytes
	switch b.Type {
	case pemPrivateKey:
		if len(b.Headers) != 0 {
			return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w: legacy PEM encryption is not supported", path, errKeyFormat))
		}
	case pemEncryptedKey:
		if passphrase == nil {
			return nil, usageErrorf("%s is encrypted: give --passphrase-file or --passphrase-env", path)
		}
		if der, err = openOfficerKey(b, passphrase); err != nil {
			return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w", path, err))
		}
		defer clear(der)
	default:
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w: PEM type %q", path, errKeyFormat, b.Type))
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w: not PKCS#8", path, errKeyFormat))
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w: %T", path, quorum.ErrUnsupportedKey, k))
	}
	if _, err := quorum.NewOfficer("check", signer.Public()); err != nil {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s: %w", path, err))
	}
	return signer, nil
}

// readOfficerPublicKey reads a PKIX PEM public key as an unnamed Officer.
func readOfficerPublicKey(path string) (quorum.Officer, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return quorum.Officer{}, localError(codes.FailedPrecondition, fmt.Errorf("read public key: %w", err))
	}
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != pemPublicKey {
		return quorum.Officer{}, localError(codes.InvalidArgument, fmt.Errorf("%s: not a PEM %q block", path, pemPublicKey))
	}
	pub, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return quorum.Officer{}, localError(codes.InvalidArgument, fmt.Errorf("%s: %w", path, err))
	}
	o, err := quorum.NewOfficer("officer", pub)
	if err != nil {
		return quorum.Officer{}, localError(codes.InvalidArgument, fmt.Errorf("%s: %w", path, err))
	}
	return o, nil
}

// keyTypeName names a PKIX public key's type for display.
func keyTypeName(der []byte) string {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return "unknown"
	}
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return "ed25519"
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return "ecdsa-p256"
		}
	}
	return "unsupported"
}
