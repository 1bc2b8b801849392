package main

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// maxInMemory caps inputs read whole (messages, MAC data, wrapped keys);
// custodyd caps requests well below this. Files of any size go through
// "crypto encrypt", which streams.
const maxInMemory = 64 << 20

// keyOpts are the flags every crypto command shares.
type keyOpts struct {
	key     string
	context []string
}

func (o *keyOpts) register(cmd *cobra.Command, withContext bool) {
	cmd.Flags().StringVar(&o.key, "key", "", "name of the vault key (required)")
	if withContext {
		cmd.Flags().StringSliceVar(&o.context, "context", nil, "encryption context k=v[,k=v...]; repeatable; must match on decrypt")
	}
}

func (o *keyOpts) check() (map[string]string, error) {
	if o.key == "" {
		return nil, usageErrorf("--key NAME is required (the client key file is --tls-key here)")
	}
	return parseContext(o.context)
}

// parseContext turns k=v items into an encryption context.
func parseContext(items []string) (map[string]string, error) {
	if len(items) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(items))
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if !ok || k == "" {
			return nil, usageErrorf("--context item %q is not k=v", it)
		}
		if _, dup := m[k]; dup {
			return nil, usageErrorf("--context key %q given twice", k)
		}
		m[k] = v
	}
	return m, nil
}

// bytesArg decodes a binary flag value: "@FILE" reads FILE's raw bytes
// ("@-" reads stdin), anything else is standard base64 as custodyctl prints it.
func (a *app) bytesArg(flag, val string) ([]byte, error) {
	if val == "" {
		return nil, usageErrorf("--%s is required", flag)
	}
	if path, ok := strings.CutPrefix(val, "@"); ok {
		return a.readAll(path)
	}
	b, err := base64.StdEncoding.DecodeString(val)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(val)
	}
	if err != nil {
		return nil, usageErrorf("--%s is neither base64 nor @FILE", flag)
	}
	return b, nil
}

// openInput opens FILE, or stdin for "-".
func (a *app) openInput(path string) (io.ReadCloser, error) {
	if path == "-" {
		return io.NopCloser(a.stdin), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, localError(codes.NotFound, err)
	}
	return f, nil
}

// readAll reads a whole input of at most maxInMemory bytes.
func (a *app) readAll(path string) ([]byte, error) {
	r, err := a.openInput(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, maxInMemory+1))
	if err != nil {
		return nil, localError(codes.Unknown, fmt.Errorf("read %s: %w", path, err))
	}
	if len(b) > maxInMemory {
		return nil, localError(codes.InvalidArgument, fmt.Errorf("%s is larger than %d bytes; use crypto encrypt for large data", path, maxInMemory))
	}
	return b, nil
}

// output is a destination that becomes visible only on commit: a file is
// written beside its final name and renamed, so a failed decrypt leaves no
// partial plaintext behind. Stdout cannot be taken back. An existing file
// is replaced only with --force.
type output struct {
	w         io.Writer
	f         *os.File
	path      string
	written   bool
	noClobber bool
}

// errExists reports an --out file that exists without --force.
func errExists(path string) error {
	return localError(codes.AlreadyExists, fmt.Errorf("%s exists; refusing to overwrite it (add --force to replace it)", path))
}

func (a *app) openOutput(path string, force bool) (*output, error) {
	if path == "-" {
		return &output{w: a.stdout}, nil
	}
	if _, err := os.Lstat(path); err == nil && !force {
		return nil, errExists(path)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, localError(codes.FailedPrecondition, err)
	}
	return &output{w: f, f: f, path: path, noClobber: !force}, nil
}

func (o *output) isFile() bool { return o.f != nil }

func (o *output) commit() error {
	if o.f == nil {
		return nil
	}
	if err := o.f.Sync(); err != nil {
		return localError(codes.Unknown, err)
	}
	if err := o.f.Close(); err != nil {
		return localError(codes.Unknown, err)
	}
	if o.noClobber {
		// A hard link never replaces a file that appeared meanwhile.
		err := os.Link(o.f.Name(), o.path)
		switch {
		case errors.Is(err, os.ErrExist):
			_ = os.Remove(o.f.Name())
			return errExists(o.path)
		case err == nil:
			_ = os.Remove(o.f.Name())
			o.written = true
			return nil
		}
		// No hard links here: check, then rename.
		if _, err := os.Lstat(o.path); err == nil {
			_ = os.Remove(o.f.Name())
			return errExists(o.path)
		}
	}
	if err := os.Rename(o.f.Name(), o.path); err != nil {
		return localError(codes.Unknown, err)
	}
	o.written = true
	return nil
}

// discard removes an uncommitted file; safe to call after commit.
func (o *output) discard() {
	if o.f != nil && !o.written {
		_ = o.f.Close()
		_ = os.Remove(o.f.Name())
	}
}

func sameFile(in, out string) bool {
	if in == "-" || out == "-" {
		return false
	}
	a, err1 := os.Stat(in)
	b, err2 := os.Stat(out)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// fileResult is what encrypt/decrypt report when output went to a file.
type fileResult struct {
	KeyName    string `json:"key_name"`
	KeyVersion uint32 `json:"key_version"`
	Bytes      int64  `json:"plaintext_bytes"`
	Out        string `json:"out"`
}

func (a *app) cryptoCommand() *cobra.Command {
	return groupCommand("crypto", "Encrypt, decrypt, sign and MAC with vault keys",
		a.encryptCommand(), a.decryptCommand(), a.datakeyCommand(), a.unwrapCommand(), a.rewrapCommand(),
		a.signCommand(), a.verifyCommand(), a.pubkeyCommand(), a.macCommand(), a.verifyMacCommand())
}

// cryptoCall opens the CryptoService and a --timeout-bounded context.
func (a *app) cryptoCall(ctx context.Context) (custodyv1.CryptoServiceClient, context.Context, context.CancelFunc, error) {
	c, err := a.crypto()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := a.callCtx(ctx)
	return c, ctx, cancel, nil
}

func (a *app) encryptCommand() *cobra.Command {
	var o keyOpts
	var in, out string
	var force bool
	cmd := &cobra.Command{
		Use:   "encrypt --key NAME [--context k=v,...] [--in FILE|-] [--out FILE|-] [--force]",
		Short: "Envelope-encrypt a file or stdin of any size",
		Long: `Asks custodyd for a fresh data key bound to the encryption context, encrypts
the input locally with AES-256-GCM in 64 KiB chunks, and writes the wrapped
data key and the chunks (docs/file-format.md). Decrypt needs the same key
name and context.`,
		Args: exactArgs(0, "no arguments (use --in)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := o.check()
			if err != nil {
				return err
			}
			if sameFile(in, out) {
				return usageErrorf("--in and --out are the same file")
			}
			src, err := a.openInput(in)
			if err != nil {
				return err
			}
			defer src.Close()
			c, err := a.crypto()
			if err != nil {
				return err
			}
			dst, err := a.openOutput(out, force)
			if err != nil {
				return err
			}
			defer dst.discard()

			ctx, cancel := a.callCtx(cmd.Context())
			dk, err := c.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: o.key, Context: ec})
			cancel()
			if err != nil {
				return err
			}
			key := dk.GetPlaintext()
			defer clear(key)
			if len(key) != dataKeySize {
				return localError(codes.Internal, fmt.Errorf("custodyd returned a %d-byte data key, want %d", len(key), dataKeySize))
			}
			h, err := newFileHeader(dk.GetWrappedKey(), defaultChunkSize)
			if err != nil {
				return localError(codes.Internal, err)
			}
			pr, done := a.progressFor(src, in, "encrypting")
			n, err := encryptFile(dst.w, pr, h, key)
			done()
			clear(key)
			if err != nil {
				return localError(codes.Unknown, err)
			}
			return a.finishFile(dst, "encrypted", fileResult{KeyName: o.key, KeyVersion: dk.GetKeyVersion(), Bytes: n, Out: out})
		},
	}
	o.register(cmd, true)
	cmd.Flags().StringVar(&in, "in", "-", "plaintext file, - for stdin")
	cmd.Flags().StringVar(&out, "out", "-", "encrypted file to write, - for stdout")
	cmd.Flags().BoolVar(&force, "force", false, "replace --out if it exists")
	return cmd
}

func (a *app) decryptCommand() *cobra.Command {
	var o keyOpts
	var in, out string
	var force bool
	cmd := &cobra.Command{
		Use:   "decrypt --key NAME [--context k=v,...] [--in FILE|-] [--out FILE|-] [--force]",
		Short: "Decrypt a file written by crypto encrypt",
		Long: `Unwraps the file's data key through custodyd (same key name and context as
at encryption) and decrypts and authenticates every chunk. With --out FILE
nothing is written unless the whole file authenticates; with stdout, output
already written before a failure must be discarded.`,
		Args: exactArgs(0, "no arguments (use --in)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := o.check()
			if err != nil {
				return err
			}
			if sameFile(in, out) {
				return usageErrorf("--in and --out are the same file")
			}
			src, err := a.openInput(in)
			if err != nil {
				return err
			}
			defer src.Close()
			h, err := readFileHeader(src)
			if err != nil {
				return localError(codes.InvalidArgument, err)
			}
			c, err := a.crypto()
			if err != nil {
				return err
			}
			dst, err := a.openOutput(out, force)
			if err != nil {
				return err
			}
			defer dst.discard()

			ctx, cancel := a.callCtx(cmd.Context())
			uw, err := c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: o.key, WrappedKey: h.wrappedKey, Context: ec})
			cancel()
			if err != nil {
				return err
			}
			key := uw.GetPlaintext()
			defer clear(key)
			pr, done := a.progressFor(src, in, "decrypting")
			n, err := decryptFile(dst.w, pr, h, key)
			done()
			clear(key)
			if err != nil {
				if errors.Is(err, errFileAuth) || errors.Is(err, errFileTruncated) {
					return localError(codes.DataLoss, err)
				}
				return localError(codes.Unknown, err)
			}
			return a.finishFile(dst, "decrypted", fileResult{KeyName: o.key, KeyVersion: uw.GetKeyVersion(), Bytes: n, Out: out})
		},
	}
	o.register(cmd, true)
	cmd.Flags().StringVar(&in, "in", "-", "encrypted file, - for stdin")
	cmd.Flags().StringVar(&out, "out", "-", "plaintext file to write, - for stdout")
	cmd.Flags().BoolVar(&force, "force", false, "replace --out if it exists")
	return cmd
}

// readRecipient reads an RSA public key (PEM "PUBLIC KEY" or DER PKIX) and
// returns its DER form.
func (a *app) readRecipient(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := a.readAll(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, usageErrorf("--recipient %s: PEM block is %q, want \"PUBLIC KEY\"", path, blk.Type)
		}
		b = blk.Bytes
	}
	pub, err := x509.ParsePKIXPublicKey(b)
	if err != nil {
		return nil, usageErrorf("--recipient %s: not a PKIX public key: %v", path, err)
	}
	if _, ok := pub.(*rsa.PublicKey); !ok {
		return nil, usageErrorf("--recipient %s: key is %T, want RSA", path, pub)
	}
	return b, nil
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// printFields writes "name: value" lines, skipping empty values.
func printFields(w io.Writer, kv ...string) {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			fmt.Fprintf(w, "%s: %s\n", kv[i], kv[i+1])
		}
	}
}

func (a *app) datakeyCommand() *cobra.Command {
	var o keyOpts
	var withoutPlaintext bool
	var recipient string
	cmd := &cobra.Command{
		Use:   "datakey --key NAME [--context k=v,...] [--without-plaintext] [--recipient PUBKEY]",
		Short: "Generate a data key wrapped under a vault key",
		Long: `Prints the wrapped data key (base64) and, unless --without-plaintext or
--recipient is given, the plaintext data key. With --recipient (an RSA public
key, PEM or DER) the data key is also wrapped to that key inside the HSM.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := o.check()
			if err != nil {
				return err
			}
			rcpt, err := a.readRecipient(recipient)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.cryptoCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{
				KeyName: o.key, Context: ec, WithoutPlaintext: withoutPlaintext, RecipientPublicKey: rcpt})
			if err != nil {
				return err
			}
			defer clear(resp.Plaintext)
			return a.emit(resp, func(w io.Writer) {
				printFields(w, "key_version", fmt.Sprint(resp.GetKeyVersion()), "wrapped_key", b64(resp.GetWrappedKey()),
					"plaintext", b64(resp.GetPlaintext()), "recipient_wrapped_key", b64(resp.GetRecipientWrappedKey()),
					"recipient_wrapping", resp.GetRecipientWrapping())
			})
		},
	}
	o.register(cmd, true)
	cmd.Flags().BoolVar(&withoutPlaintext, "without-plaintext", false, "return only the wrapped forms")
	cmd.Flags().StringVar(&recipient, "recipient", "", "RSA public key file (PEM or DER) to wrap the data key to")
	return cmd
}

func (a *app) unwrapCommand() *cobra.Command {
	var o keyOpts
	var wrapped, recipient string
	cmd := &cobra.Command{
		Use:   "unwrap --key NAME --wrapped BASE64|@FILE [--context k=v,...] [--recipient PUBKEY]",
		Short: "Recover a wrapped data key",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := o.check()
			if err != nil {
				return err
			}
			wk, err := a.bytesArg("wrapped", wrapped)
			if err != nil {
				return err
			}
			rcpt, err := a.readRecipient(recipient)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.cryptoCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: o.key, WrappedKey: wk, Context: ec, RecipientPublicKey: rcpt})
			if err != nil {
				return err
			}
			defer clear(resp.Plaintext)
			return a.emit(resp, func(w io.Writer) {
				printFields(w, "key_version", fmt.Sprint(resp.GetKeyVersion()), "plaintext", b64(resp.GetPlaintext()),
					"recipient_wrapped_key", b64(resp.GetRecipientWrappedKey()), "recipient_wrapping", resp.GetRecipientWrapping())
			})
		},
	}
	o.register(cmd, true)
	cmd.Flags().StringVar(&wrapped, "wrapped", "", "wrapped data key: base64, or @FILE for raw bytes")
	cmd.Flags().StringVar(&recipient, "recipient", "", "RSA public key file (PEM or DER) to receive the data key instead of plaintext")
	return cmd
}

func (a *app) rewrapCommand() *cobra.Command {
	var o keyOpts
	var wrapped string
	cmd := &cobra.Command{
		Use:   "rewrap --key NAME --wrapped BASE64|@FILE [--context k=v,...]",
		Short: "Re-wrap a data key under the key's primary version",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ec, err := o.check()
			if err != nil {
				return err
			}
			wk, err := a.bytesArg("wrapped", wrapped)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.cryptoCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Rewrap(ctx, &custodyv1.RewrapRequest{KeyName: o.key, WrappedKey: wk, Context: ec})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				printFields(w, "key_version", fmt.Sprint(resp.GetKeyVersion()), "wrapped_key", b64(resp.GetWrappedKey()))
			})
		},
	}
	o.register(cmd, true)
	cmd.Flags().StringVar(&wrapped, "wrapped", "", "wrapped data key: base64, or @FILE for raw bytes")
	return cmd
}

// signedInput holds --message FILE / --digest HEX, exactly one of which is given.
type signedInput struct{ message, digest string }

func (s *signedInput) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&s.message, "message", "", "file holding the message, - for stdin")
	cmd.Flags().StringVar(&s.digest, "digest", "", "hex digest of the message (not for Ed25519 keys)")
}

// read returns (message, digest) with exactly one non-nil.
func (a *app) readSigned(s *signedInput) (msg, digest []byte, err error) {
	switch {
	case (s.message == "") == (s.digest == ""):
		return nil, nil, usageErrorf("give exactly one of --message FILE or --digest HEX")
	case s.digest != "":
		d, err := hex.DecodeString(s.digest)
		if err != nil || len(d) == 0 {
			return nil, nil, usageErrorf("--digest is not a hex string")
		}
		return nil, d, nil
	default:
		m, err := a.readAll(s.message)
		return m, nil, err
	}
}

func (a *app) signCommand() *cobra.Command {
	var o keyOpts
	var si signedInput
	cmd := &cobra.Command{
		Use:   "sign --key NAME (--message FILE|- | --digest HEX)",
		Short: "Sign a message or digest with the key's primary version",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := o.check(); err != nil {
				return err
			}
			msg, digest, err := a.readSigned(&si)
			if err != nil {
				return err
			}
			req := &custodyv1.SignRequest{KeyName: o.key}
			if digest != nil {
				req.Input = &custodyv1.SignRequest_Digest{Digest: digest}
			} else {
				req.Input = &custodyv1.SignRequest_Message{Message: msg}
			}
			c, ctx, cancel, err := a.cryptoCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Sign(ctx, req)
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				printFields(w, "key_version", fmt.Sprint(resp.GetKeyVersion()), "signature", b64(resp.GetSignature()))
			})
		},
	}
	o.register(cmd, false)
	si.register(cmd)
	return cmd
}

func (a *app) verifyCommand() *cobra.Command {
	var o keyOpts
	var si signedInput
	var version uint32
	var sig string
	cmd := &cobra.Command{
		Use:   "verify --key NAME [--version N] (--message FILE|- | --digest HEX) --signature BASE64|@FILE",
		Short: "Verify a signature; exits 1 when it is not valid",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := o.check(); err != nil {
				return err
			}
			s, err := a.bytesArg("signature", sig)
			if err != nil {
				return err
			}
			msg, digest, err := a.readSigned(&si)
			if err != nil {
				return err
			}
			req := &custodyv1.VerifyRequest{KeyName: o.key, KeyVersion: version, Signature: s}
			if digest != nil {
				req.Input = &custodyv1.VerifyRequest_Digest{Digest: digest}
			} else {
				req.Input = &custodyv1.VerifyRequest_Message{Message: msg}
			}
			c, ctx, cancel, err := a.cryptoCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Verify(ctx, req)
			if err != nil {
				return err
			}
			return a.reportValidity(resp, resp.GetValid(), "signature")
		},
	}
	o.register(cmd, false)
	si.register(cmd)
	cmd.Flags().Uint32Var(&version, "version", 0, "key version that signed; 0 for the primary")
	cmd.Flags().StringVar(&sig, "signature", "", "signature: base64 as printed by sign, or @FILE for raw bytes")
	return cmd
}

// reportValidity prints a verification result and fails the command when it
// is invalid, so scripts can rely on the exit status.
func (a *app) reportValidity(resp proto.Message, valid bool, what string) error {
	err := a.emit(resp, func(w io.Writer) {
		if valid {
			fmt.Fprintln(w, "valid")
		} else {
			fmt.Fprintln(w, "invalid")
		}
	})
	if err != nil || valid {
		return err
	}
	return localError(codes.InvalidArgument, fmt.Errorf("%s is not valid", what))
}

func (a *app) pubkeyCommand() *cobra.Command {
	var o keyOpts
	var version uint32
	cmd := &cobra.Command{
		Use:   "pubkey --key NAME [--version N]",
		Short: "Print a signing key's public key (PEM)",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := o.check(); err != nil {
				return err
			}
			c, ctx, cancel, err := a.cryptoCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.GetPublicKey(ctx, &custodyv1.GetPublicKeyRequest{KeyName: o.key, KeyVersion: version})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				pemText := resp.GetPem()
				if pemText == "" {
					pemText = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: resp.GetDer()}))
				}
				fmt.Fprint(w, pemText)
				if !strings.HasSuffix(pemText, "\n") {
					fmt.Fprintln(w)
				}
			})
		},
	}
	o.register(cmd, false)
	cmd.Flags().Uint32Var(&version, "version", 0, "key version; 0 for the primary")
	return cmd
}

func (a *app) macCommand() *cobra.Command {
	var o keyOpts
	var in string
	cmd := &cobra.Command{
		Use:   "mac --key NAME [--in FILE|-]",
		Short: "Compute an HMAC-SHA256 with the key's primary version",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := o.check(); err != nil {
				return err
			}
			data, err := a.readAll(in)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.cryptoCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.Mac(ctx, &custodyv1.MacRequest{KeyName: o.key, Data: data})
			if err != nil {
				return err
			}
			return a.emit(resp, func(w io.Writer) {
				printFields(w, "key_version", fmt.Sprint(resp.GetKeyVersion()), "mac", b64(resp.GetMac()))
			})
		},
	}
	o.register(cmd, false)
	cmd.Flags().StringVar(&in, "in", "-", "data file, - for stdin")
	return cmd
}

func (a *app) verifyMacCommand() *cobra.Command {
	var o keyOpts
	var in, mac string
	var version uint32
	cmd := &cobra.Command{
		Use:   "verify-mac --key NAME [--version N] [--in FILE|-] --mac BASE64|@FILE",
		Short: "Verify an HMAC; exits 1 when it is not valid",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := o.check(); err != nil {
				return err
			}
			m, err := a.bytesArg("mac", mac)
			if err != nil {
				return err
			}
			data, err := a.readAll(in)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.cryptoCall(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := c.VerifyMac(ctx, &custodyv1.VerifyMacRequest{KeyName: o.key, KeyVersion: version, Data: data, Mac: m})
			if err != nil {
				return err
			}
			return a.reportValidity(resp, resp.GetValid(), "MAC")
		},
	}
	o.register(cmd, false)
	cmd.Flags().StringVar(&in, "in", "-", "data file, - for stdin")
	cmd.Flags().Uint32Var(&version, "version", 0, "key version that computed the MAC; 0 for the primary")
	cmd.Flags().StringVar(&mac, "mac", "", "MAC: base64 as printed by mac, or @FILE for raw bytes")
	return cmd
}

// finishFile commits the output file and, when it is a file (not stdout),
// reports what was written.
func (a *app) finishFile(dst *output, verb string, res fileResult) error {
	if err := dst.commit(); err != nil {
		return err
	}
	if !dst.isFile() {
		return nil
	}
	return a.emitValue(res, func(w io.Writer) {
		fmt.Fprintf(w, "%s %d bytes to %s with key %s version %d\n", verb, res.Bytes, res.Out, res.KeyName, res.KeyVersion)
	})
}
