package server

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/audit"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/keys/hsmtoken"
	"github.com/custodyhq/custody/internal/policy"
)

// errPlaintextNotGranted: the caller asked for a plaintext data key but its
// grant only allows key transport to a recipient.
var errPlaintextNotGranted = fmt.Errorf("%w: this grant does not allow plaintext data keys; pass recipient_public_key", policy.ErrNotGranted)

func (s *Server) versionKey(ctx context.Context, e *keys.Entry, v keys.Version, err error) (hsm.Key, error) {
	if err != nil {
		return hsm.Key{}, err
	}
	callFrom(ctx).version = v.Number
	o, err := e.Object(v.Number)
	if err != nil {
		return hsm.Key{}, err
	}
	return hsmtoken.Key(o), nil
}

// Encrypt seals a small payload under the key's primary version.
func (s *Server) Encrypt(ctx context.Context, req *custodyv1.EncryptRequest) (*custodyv1.EncryptResponse, error) {
	if len(req.GetPlaintext()) > s.limits.MaxPayload {
		return nil, fmt.Errorf("%w: plaintext is %d bytes; the limit is %d (use GenerateDataKey for large data)", ErrInvalidArgument, len(req.GetPlaintext()), s.limits.MaxPayload)
	}
	e, _, err := s.access(ctx, req.GetKeyName(), req.GetContext())
	if err != nil {
		return nil, err
	}
	v, err := e.Key.ForEncrypt()
	hk, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return nil, err
	}
	aad, err := keys.CiphertextAAD(e.Key.ID, v.Number, req.GetContext())
	if err != nil {
		return nil, err
	}
	iv, ct, err := s.hsm.Encrypt(ctx, hk, req.GetPlaintext(), aad)
	if err != nil {
		return nil, err
	}
	env, err := keys.NewCiphertext(e.Key.ID, v.Number, iv, ct)
	if err != nil {
		return nil, err
	}
	out, err := env.Marshal()
	if err != nil {
		return nil, err
	}
	return &custodyv1.EncryptResponse{Ciphertext: out, KeyVersion: v.Number}, nil
}

// parseEnvelope parses an envelope of one of the wanted formats that
// belongs to e. Every failure looks the same to the caller as a failed tag check.
func parseEnvelope(e *keys.Entry, b []byte, formats ...byte) (*keys.Envelope, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: ciphertext is empty", ErrInvalidArgument)
	}
	env, err := keys.Parse(b)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(formats, []byte{env.Format}) {
		return nil, fmt.Errorf("%w: envelope format 0x%02x, want one of % x", ErrInvalidArgument, env.Format, formats)
	}
	if !bytes.Equal(env.KeyID, e.Key.ID) {
		return nil, fmt.Errorf("%w: envelope was made by another key", errDecryptFailed)
	}
	return env, nil
}

// Decrypt opens a ciphertext made by Encrypt under any enabled version at or
// above the key's minimum.
func (s *Server) Decrypt(ctx context.Context, req *custodyv1.DecryptRequest) (*custodyv1.DecryptResponse, error) {
	e, _, err := s.access(ctx, req.GetKeyName(), req.GetContext())
	if err != nil {
		return nil, err
	}
	env, err := parseEnvelope(e, req.GetCiphertext(), keys.FormatCiphertext)
	if err != nil {
		return nil, err
	}
	v, err := e.Key.ForDecrypt(env.Version)
	hk, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return nil, err
	}
	aad, err := env.AAD(req.GetContext())
	if err != nil {
		return nil, err
	}
	pt, err := s.hsm.Decrypt(ctx, hk, env.IV, env.Sealed(), aad)
	if err != nil {
		return nil, err
	}
	return &custodyv1.DecryptResponse{Plaintext: pt, KeyVersion: v.Number}, nil
}

// recipient parses and authorises a key-transport recipient.
func recipient(d policy.Decision, der []byte) (*rsa.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: recipient_public_key is not a DER SubjectPublicKeyInfo", ErrInvalidArgument)
	}
	rk, ok := pub.(*rsa.PublicKey)
	if !ok || rk.N.BitLen() < hsm.MinRecipientBits {
		return nil, fmt.Errorf("%w: recipient_public_key must be RSA of at least %d bits", ErrInvalidArgument, hsm.MinRecipientBits)
	}
	sum := sha256.Sum256(der)
	if !d.RecipientAllowed(sum[:]) {
		return nil, fmt.Errorf("%w: recipient key %x is not allowed for this identity", policy.ErrNotGranted, sum[:8])
	}
	return rk, nil
}

// bind makes a wrapped-key envelope: KWP-wrapped bytes plus a GCM tag, made
// in the HSM, over key id, version, the wrapped bytes and the context.
func (s *Server) bind(ctx context.Context, e *keys.Entry, hk hsm.Key, version uint32, wrapped []byte, encCtx map[string]string) ([]byte, error) {
	aad, err := keys.WrappedKeyAAD(e.Key.ID, version, wrapped, encCtx)
	if err != nil {
		return nil, err
	}
	iv, tag, err := s.hsm.Encrypt(ctx, hk, nil, aad)
	if err != nil {
		return nil, err
	}
	env, err := keys.NewWrappedKey(e.Key.ID, version, iv, wrapped, tag)
	if err != nil {
		return nil, err
	}
	return env.Marshal()
}

// GenerateDataKey makes a data key in the HSM and returns it wrapped under
// the primary version, plus either its plaintext (if asked and granted) or a
// copy wrapped to the recipient inside the HSM.
func (s *Server) GenerateDataKey(ctx context.Context, req *custodyv1.GenerateDataKeyRequest) (*custodyv1.GenerateDataKeyResponse, error) {
	e, d, err := s.access(ctx, req.GetKeyName(), req.GetContext())
	if err != nil {
		return nil, err
	}
	v, err := e.Key.ForEncrypt()
	hk, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return nil, err
	}
	out := &custodyv1.GenerateDataKeyResponse{KeyVersion: v.Number}
	var wrapped []byte
	switch {
	case len(req.GetRecipientPublicKey()) > 0:
		rk, err := recipient(d, req.GetRecipientPublicKey())
		if err != nil {
			return nil, err
		}
		var how hsm.OAEP
		wrapped, out.RecipientWrappedKey, how, err = s.hsm.GenerateDataKeyFor(ctx, hk, rk)
		if err != nil {
			return nil, err
		}
		out.RecipientWrapping = how.String()
	case !req.GetWithoutPlaintext() && !d.AllowPlaintext:
		return nil, errPlaintextNotGranted
	case !req.GetWithoutPlaintext():
		// The plaintext leaves anyway: a sealed key, no HSM key object (sealedkeys.go).
		if out.WrappedKey, out.Plaintext, err = s.sealDataKey(ctx, e, hk, v.Number, req.GetContext()); err != nil {
			return nil, err
		}
		return out, nil
	default:
		wrapped, _, err = s.hsm.GenerateDataKey(ctx, hk, false)
		if err != nil {
			return nil, err
		}
	}
	if out.WrappedKey, err = s.bind(ctx, e, hk, v.Number, wrapped, req.GetContext()); err != nil {
		return nil, err
	}
	return out, nil
}

// openWrapped checks a wrapped-key envelope's binding tag under its version
// and returns the version's HSM key and the envelope. A sealed key (format
// 0x03) has no binding tag: it is authenticated when opened (openSealed).
func (s *Server) openWrapped(ctx context.Context, e *keys.Entry, b []byte, encCtx map[string]string) (hsm.Key, *keys.Envelope, error) {
	env, err := parseEnvelope(e, b, keys.FormatWrappedKey, keys.FormatSealedKey)
	if err != nil {
		return hsm.Key{}, nil, err
	}
	v, err := e.Key.ForDecrypt(env.Version)
	hk, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return hsm.Key{}, nil, err
	}
	aad, err := env.AAD(encCtx)
	if err != nil || env.Format == keys.FormatSealedKey {
		return hk, env, err
	}
	if _, err := s.hsm.Decrypt(ctx, hk, env.IV, env.Tag, aad); err != nil {
		return hsm.Key{}, nil, err
	}
	return hk, env, nil
}

// Unwrap returns a wrapped data key's plaintext (if granted) or re-wraps it
// to the recipient inside the HSM.
func (s *Server) Unwrap(ctx context.Context, req *custodyv1.UnwrapRequest) (*custodyv1.UnwrapResponse, error) {
	e, d, err := s.access(ctx, req.GetKeyName(), req.GetContext())
	if err != nil {
		return nil, err
	}
	rk, err := deliveryTo(d, req.GetRecipientPublicKey())
	if err != nil {
		return nil, err
	}
	hk, env, err := s.openWrapped(ctx, e, req.GetWrappedKey(), req.GetContext())
	if err != nil {
		return nil, err
	}
	out := &custodyv1.UnwrapResponse{KeyVersion: env.Version}
	out.Plaintext, out.RecipientWrappedKey, out.RecipientWrapping, err = s.deliver(ctx, hk, env, req.GetContext(), rk, d.AllowPlaintext)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// deliveryTo decides how an unwrapped data key may leave: wrapped to the
// given recipient key (which the grant must pin), or, with no recipient, as
// plaintext if the grant allows it. A nil key means plaintext.
func deliveryTo(d policy.Decision, recipientDER []byte) (*rsa.PublicKey, error) {
	if len(recipientDER) > 0 {
		return recipient(d, recipientDER)
	}
	if !d.AllowPlaintext {
		return nil, errPlaintextNotGranted
	}
	return nil, nil
}

// deliver unwraps a KWP-wrapped data key under hk inside the HSM and hands
// it out as deliveryTo decided: wrapped to rk there, or as plaintext. A
// sealed key goes to deliverSealed.
func (s *Server) deliver(ctx context.Context, hk hsm.Key, env *keys.Envelope, encCtx map[string]string, rk *rsa.PublicKey, allowPlaintext bool) (plaintext, forRecipient []byte, wrapping string, err error) {
	if env.Format == keys.FormatSealedKey {
		return s.deliverSealed(ctx, hk, env, encCtx, rk, allowPlaintext)
	}
	if rk == nil {
		plaintext, err = s.hsm.UnwrapDataKey(ctx, hk, env.Body)
		return plaintext, nil, "", err
	}
	forRecipient, how, err := s.hsm.UnwrapDataKeyFor(ctx, hk, env.Body, rk)
	return nil, forRecipient, how.String(), err
}

// Rewrap moves a wrapped data key to the key's primary version inside the
// HSM; a sealed key is opened and sealed again (sealedkeys.go).
func (s *Server) Rewrap(ctx context.Context, req *custodyv1.RewrapRequest) (*custodyv1.RewrapResponse, error) {
	e, d, err := s.access(ctx, req.GetKeyName(), req.GetContext())
	if err != nil {
		return nil, err
	}
	from, env, err := s.openWrapped(ctx, e, req.GetWrappedKey(), req.GetContext())
	if err != nil {
		return nil, err
	}
	v, err := e.Key.ForEncrypt()
	to, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return nil, err
	}
	if env.Format == keys.FormatSealedKey { // a sealed key stays sealed (sealedkeys.go)
		out, err := s.resealDataKey(ctx, e, from, env, to, v.Number, req.GetContext(), d.AllowPlaintext)
		if err != nil {
			return nil, err
		}
		return &custodyv1.RewrapResponse{WrappedKey: out, KeyVersion: v.Number}, nil
	}
	wrapped, err := s.hsm.RewrapDataKey(ctx, from, to, env.Body)
	if err != nil {
		return nil, err
	}
	out, err := s.bind(ctx, e, to, v.Number, wrapped, req.GetContext())
	if err != nil {
		return nil, err
	}
	return &custodyv1.RewrapResponse{WrappedKey: out, KeyVersion: v.Number}, nil
}

// signInput turns a digest or message into what the HSM signs for purpose p.
func signInput(p keys.Purpose, digest []byte, message []byte, isDigest bool) ([]byte, error) {
	maxMsg := 1 << 20
	if !isDigest && len(message) > maxMsg {
		return nil, fmt.Errorf("%w: message larger than %d bytes; sign a digest", ErrInvalidArgument, maxMsg)
	}
	switch p {
	case keys.PurposeSignEd25519:
		if isDigest {
			return nil, fmt.Errorf("%w: Ed25519 signs messages, not digests", ErrInvalidArgument)
		}
		return message, nil
	case keys.PurposeSignECDSAP384:
		if isDigest {
			if len(digest) != sha512.Size384 {
				return nil, fmt.Errorf("%w: digest must be a 48-byte SHA-384", ErrInvalidArgument)
			}
			return digest, nil
		}
		d := sha512.Sum384(message)
		return d[:], nil
	case keys.PurposeSignECDSAP256, keys.PurposeSignRSAPSS3072:
		if isDigest {
			if len(digest) != sha256.Size {
				return nil, fmt.Errorf("%w: digest must be a 32-byte SHA-256", ErrInvalidArgument)
			}
			return digest, nil
		}
		d := sha256.Sum256(message)
		return d[:], nil
	}
	return nil, fmt.Errorf("%w: key purpose %s does not sign", keys.ErrWrongPurpose, p)
}

// Sign signs a digest or message with the key's primary version.
func (s *Server) Sign(ctx context.Context, req *custodyv1.SignRequest) (*custodyv1.SignResponse, error) {
	e, _, err := s.access(ctx, req.GetKeyName(), nil)
	if err != nil {
		return nil, err
	}
	_, isDigest := req.GetInput().(*custodyv1.SignRequest_Digest)
	if req.GetInput() == nil {
		return nil, fmt.Errorf("%w: one of digest or message is required", ErrInvalidArgument)
	}
	v, err := e.Key.ForSign()
	hk, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return nil, err
	}
	in, err := signInput(e.Key.Purpose, req.GetDigest(), req.GetMessage(), isDigest)
	if err != nil {
		return nil, err
	}
	sig, err := s.hsm.Sign(ctx, hk, in)
	if err != nil {
		return nil, err
	}
	return &custodyv1.SignResponse{Signature: sig, KeyVersion: v.Number}, nil
}

// Verify checks a signature with a version's public key.
func (s *Server) Verify(ctx context.Context, req *custodyv1.VerifyRequest) (*custodyv1.VerifyResponse, error) {
	e, _, err := s.access(ctx, req.GetKeyName(), nil)
	if err != nil {
		return nil, err
	}
	if req.GetInput() == nil {
		return nil, fmt.Errorf("%w: one of digest or message is required", ErrInvalidArgument)
	}
	_, isDigest := req.GetInput().(*custodyv1.VerifyRequest_Digest)
	ver := req.GetKeyVersion()
	if ver == 0 {
		ver = e.Key.Primary
	}
	v, err := e.Key.ForVerify(ver)
	hk, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return nil, err
	}
	in, err := signInput(e.Key.Purpose, req.GetDigest(), req.GetMessage(), isDigest)
	if err != nil {
		return nil, err
	}
	ok, err := s.hsm.Verify(ctx, hk, in, req.GetSignature())
	if err != nil {
		return nil, err
	}
	return &custodyv1.VerifyResponse{Valid: ok}, nil
}

// GetPublicKey returns a signing key version's public key.
func (s *Server) GetPublicKey(ctx context.Context, req *custodyv1.GetPublicKeyRequest) (*custodyv1.GetPublicKeyResponse, error) {
	e, _, err := s.access(ctx, req.GetKeyName(), nil)
	if err != nil {
		return nil, err
	}
	ver := req.GetKeyVersion()
	if ver == 0 {
		ver = e.Key.Primary
	}
	v, err := e.Key.ForVerify(ver)
	hk, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return nil, err
	}
	pub, err := s.hsm.PublicKey(ctx, hk)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return &custodyv1.GetPublicKeyResponse{
		Der: der, Pem: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		KeyVersion: v.Number, Purpose: purposeToProto[e.Key.Purpose],
	}, nil
}

// Mac computes HMAC-SHA256 with the key's primary version.
func (s *Server) Mac(ctx context.Context, req *custodyv1.MacRequest) (*custodyv1.MacResponse, error) {
	if len(req.GetData()) > s.limits.MaxPayload {
		return nil, fmt.Errorf("%w: data is %d bytes; the limit is %d", ErrInvalidArgument, len(req.GetData()), s.limits.MaxPayload)
	}
	e, _, err := s.access(ctx, req.GetKeyName(), nil)
	if err != nil {
		return nil, err
	}
	v, err := e.Key.ForMAC()
	hk, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return nil, err
	}
	mac, err := s.hsm.MAC(ctx, hk, req.GetData())
	if err != nil {
		return nil, err
	}
	return &custodyv1.MacResponse{Mac: mac, KeyVersion: v.Number}, nil
}

// VerifyMac recomputes an HMAC and compares it in constant time.
func (s *Server) VerifyMac(ctx context.Context, req *custodyv1.VerifyMacRequest) (*custodyv1.VerifyMacResponse, error) {
	if len(req.GetData()) > s.limits.MaxPayload {
		return nil, fmt.Errorf("%w: data is %d bytes; the limit is %d", ErrInvalidArgument, len(req.GetData()), s.limits.MaxPayload)
	}
	e, _, err := s.access(ctx, req.GetKeyName(), nil)
	if err != nil {
		return nil, err
	}
	ver := req.GetKeyVersion()
	if ver == 0 {
		ver = e.Key.Primary
	}
	v, err := e.Key.ForVerifyMAC(ver)
	hk, err := s.versionKey(ctx, e, v, err)
	if err != nil {
		return nil, err
	}
	ok, err := s.hsm.VerifyMAC(ctx, hk, req.GetData(), req.GetMac())
	if err != nil {
		return nil, err
	}
	return &custodyv1.VerifyMacResponse{Valid: ok}, nil
}

// itemError renders one batch item's failure.
func (s *Server) itemError(err error) *custodyv1.ItemError {
	st := toStatus(err, s.log)
	return &custodyv1.ItemError{Code: int32(st.Code()), Message: st.Message()}
}

func (s *Server) checkBatch(n int) error {
	if n == 0 {
		return fmt.Errorf("%w: batch is empty", ErrInvalidArgument)
	}
	if n > s.limits.MaxBatch {
		return fmt.Errorf("%w: batch has %d items; the limit is %d", ErrInvalidArgument, n, s.limits.MaxBatch)
	}
	return nil
}

// batch runs fn for each item under its own audit record (so every item,
// allowed or refused, is on the record) and returns the per-item errors.
func batch[Req any, Resp any](s *Server, ctx context.Context, items []Req, fn func(context.Context, Req) (Resp, error)) ([]Resp, []error, error) {
	if err := s.checkBatch(len(items)); err != nil {
		return nil, nil, err
	}
	parent := callFrom(ctx)
	resps := make([]Resp, len(items))
	errs := make([]error, len(items))
	recs := make([]audit.Record, len(items))
	itemCodes := make([]codes.Code, len(items))
	calls := make([]call, len(items))
	ok := 0
	for i, it := range items {
		c := &calls[i]
		*c = call{m: parent.m, snap: s.gov.Snapshot(), identity: parent.identity, spki: parent.spki, role: parent.role, method: batchItemName(parent.method, i)}
		resps[i], errs[i] = fn(context.WithValue(ctx, callKey{}, c), it)
		st := toStatus(errs[i], s.log)
		recs[i], itemCodes[i] = s.record(c, st), st.Code()
		if errs[i] == nil {
			ok++
		}
	}
	// Every item is on the record before any result is returned, in one
	// group commit.
	if err := s.appendAll(context.WithoutCancel(ctx), recs); err != nil {
		return nil, nil, fmt.Errorf("%w: audit log unavailable", hsm.ErrUnavailable)
	}
	for _, code := range itemCodes {
		s.metrics.item(parent.method, code)
	}
	parent.detail = fmt.Sprintf("items=%d ok=%d", len(items), ok)
	return resps, errs, nil
}

// batchAuditor is an Auditor that writes several records in one group
// commit (*audit.Log does).
type batchAuditor interface {
	AppendBatch(ctx context.Context, recs []audit.Record) (uint64, error)
}

// appendAll makes recs durable: in one call where the Auditor can, else by
// concurrent Appends that group commit gathers.
func (s *Server) appendAll(ctx context.Context, recs []audit.Record) error {
	if ba, ok := s.audit.(batchAuditor); ok {
		_, err := ba.AppendBatch(ctx, recs)
		return err
	}
	var wg sync.WaitGroup
	var failed atomic.Bool
	for i := range recs {
		wg.Go(func() {
			if _, err := s.audit.Append(ctx, recs[i]); err != nil {
				failed.Store(true)
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		return errAuditUnavailable
	}
	return nil
}

// batchItemNames caches the audited names of batch items, "<method>[i]",
// so that a batch does not format one per item.
var batchItemNames sync.Map // method -> *[]string

func batchItemName(method string, i int) string {
	const cached = 256
	if i >= cached {
		return method + "[" + strconv.Itoa(i) + "]"
	}
	v, ok := batchItemNames.Load(method)
	if !ok {
		names := make([]string, cached)
		for j := range names {
			names[j] = method + "[" + strconv.Itoa(j) + "]"
		}
		v, _ = batchItemNames.LoadOrStore(method, &names)
	}
	return (*v.(*[]string))[i]
}

// results renders batch outcomes with wrap, which builds one result from
// either a response or an item error.
func results[Resp any, Res any](s *Server, resps []Resp, errs []error, wrap func(Resp, *custodyv1.ItemError) Res) []Res {
	out := make([]Res, len(resps))
	for i := range resps {
		if errs[i] != nil {
			var zero Resp
			out[i] = wrap(zero, s.itemError(errs[i]))
		} else {
			out[i] = wrap(resps[i], nil)
		}
	}
	return out
}

// BatchEncrypt encrypts up to MaxBatch payloads; each item is authorised,
// budgeted and audited on its own.
func (s *Server) BatchEncrypt(ctx context.Context, req *custodyv1.BatchEncryptRequest) (*custodyv1.BatchEncryptResponse, error) {
	resps, errs, err := batch(s, ctx, req.GetItems(), s.Encrypt)
	if err != nil {
		return nil, err
	}
	return &custodyv1.BatchEncryptResponse{Results: results(s, resps, errs, func(r *custodyv1.EncryptResponse, e *custodyv1.ItemError) *custodyv1.BatchEncryptResult {
		if e != nil {
			return &custodyv1.BatchEncryptResult{Result: &custodyv1.BatchEncryptResult_Error{Error: e}}
		}
		return &custodyv1.BatchEncryptResult{Result: &custodyv1.BatchEncryptResult_Response{Response: r}}
	})}, nil
}

// BatchDecrypt decrypts up to MaxBatch ciphertexts.
func (s *Server) BatchDecrypt(ctx context.Context, req *custodyv1.BatchDecryptRequest) (*custodyv1.BatchDecryptResponse, error) {
	resps, errs, err := batch(s, ctx, req.GetItems(), s.Decrypt)
	if err != nil {
		return nil, err
	}
	return &custodyv1.BatchDecryptResponse{Results: results(s, resps, errs, func(r *custodyv1.DecryptResponse, e *custodyv1.ItemError) *custodyv1.BatchDecryptResult {
		if e != nil {
			return &custodyv1.BatchDecryptResult{Result: &custodyv1.BatchDecryptResult_Error{Error: e}}
		}
		return &custodyv1.BatchDecryptResult{Result: &custodyv1.BatchDecryptResult_Response{Response: r}}
	})}, nil
}

// BatchUnwrap unwraps up to MaxBatch data keys.
func (s *Server) BatchUnwrap(ctx context.Context, req *custodyv1.BatchUnwrapRequest) (*custodyv1.BatchUnwrapResponse, error) {
	resps, errs, err := batch(s, ctx, req.GetItems(), s.Unwrap)
	if err != nil {
		return nil, err
	}
	return &custodyv1.BatchUnwrapResponse{Results: results(s, resps, errs, func(r *custodyv1.UnwrapResponse, e *custodyv1.ItemError) *custodyv1.BatchUnwrapResult {
		if e != nil {
			return &custodyv1.BatchUnwrapResult{Result: &custodyv1.BatchUnwrapResult_Error{Error: e}}
		}
		return &custodyv1.BatchUnwrapResult{Result: &custodyv1.BatchUnwrapResult_Response{Response: r}}
	})}, nil
}
