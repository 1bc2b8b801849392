package server

// Stored data keys (custody.v1.DataKeyService), for relays that keep no
// state: custodyd keeps a data key under a caller-chosen id and hands it back
// one fetch at a time.
//
// Invariants:
//   - Only a wrapped-key envelope is stored (made and checked by bind and
//     openWrapped: KWP-wrapped under a version of the named key inside the
//     HSM, bound by a GCM tag to key id, version and encryption context; or
//     a sealed key a caller brought, checked by opening it, sealedkeys.go),
//     under "dk/<key>/<id>" in the authenticated store. A data key is never
//     stored, logged or put in an error in clear.
//   - A fetch is an unwrap: authorised for OpUnwrap with the request's
//     context, budgeted, audited, and answered with one data key's material
//     (plaintext only where the grant allows it, else wrapped to a recipient
//     key inside the HSM). No call returns more than one key's material.
//   - Authorisation comes before any store read, so an ungranted caller
//     cannot learn which ids exist; a context that differs from the stored
//     one is refused exactly as a context outside the grant is.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
	"github.com/custodyhq/custody/hsm"
	"github.com/custodyhq/custody/internal/keys"
	"github.com/custodyhq/custody/internal/policy"
	"github.com/custodyhq/custody/internal/store"
)

// Limits of stored data key ids and listings.
const (
	// MaxDataKeyIDLen is the longest id StoreDataKey accepts.
	MaxDataKeyIDLen = 128
	// MaxDataKeyPageSize is the largest ListDataKeyIds page.
	MaxDataKeyPageSize = 1000
	// DefaultDataKeyPageSize is the ListDataKeyIds page size when none is asked.
	DefaultDataKeyPageSize = 100
)

// dataKeyPrefix is where stored data keys live in the store. Key names
// cannot contain '/', so "dk/<key>/" never prefixes another key's entries.
const dataKeyPrefix = "dk/"

// dataKeyRecordV1 is the first byte of a stored record:
//
//	0x01 || SHA-256 of the canonical context (32) || wrapped-key envelope
//
// The context is kept only as its digest (what the audit log records too);
// the envelope binds the full context again under the HSM key.
const dataKeyRecordV1 = 0x01

var (
	// errDataKeysUnconfigured: the server was not given a store for stored
	// data keys (SetDataKeyStore); every call fails closed.
	errDataKeysUnconfigured = fmt.Errorf("%w: stored data keys are not configured on this server", hsm.ErrUnavailable)
	// errDataKeyNotFound: nothing is stored under the id (after authorisation).
	errDataKeyNotFound = fmt.Errorf("%w: no data key is stored under this id", keys.ErrKeyNotFound)
	// errDataKeyExists: StoreDataKey found the id taken.
	errDataKeyExists = fmt.Errorf("%w: a data key is already stored under this id", keys.ErrKeyExists)
	// errDataKeyCorrupt: a stored record that passed the store's
	// authentication but is not a record custodyd writes.
	errDataKeyCorrupt = errors.New("stored data key record is malformed")
)

// dataKeyStore holds the store that stored data keys live in.
type dataKeyStore struct{ st store.Store }

// SetDataKeyStore gives the DataKeyService its store: the daemon's
// authenticated store (store.Authenticated with the HSM sealer), so that a
// record edited or moved to another id outside custodyd fails closed. Until
// it is called every DataKeyService call answers UNAVAILABLE. It is safe to
// call while serving.
func (s *Server) SetDataKeyStore(st store.Store) {
	if st == nil {
		s.dataKeys.Store(nil)
		return
	}
	s.dataKeys.Store(&dataKeyStore{st: st})
}

func (s *Server) dataKeyStore() (store.Store, error) {
	d := s.dataKeys.Load()
	if d == nil {
		return nil, errDataKeysUnconfigured
	}
	return d.st, nil
}

// dataKeyService adapts Server to custodyv1.DataKeyServiceServer; the
// methods live on Server so they share the interceptor's call record.
type dataKeyService struct {
	custodyv1.UnimplementedDataKeyServiceServer
	s *Server
}

func (d dataKeyService) StoreDataKey(ctx context.Context, r *custodyv1.StoreDataKeyRequest) (*custodyv1.StoreDataKeyResponse, error) {
	return d.s.StoreDataKey(ctx, r)
}

func (d dataKeyService) FetchDataKey(ctx context.Context, r *custodyv1.FetchDataKeyRequest) (*custodyv1.FetchDataKeyResponse, error) {
	return d.s.FetchDataKey(ctx, r)
}

func (d dataKeyService) ListDataKeyIds(ctx context.Context, r *custodyv1.ListDataKeyIdsRequest) (*custodyv1.ListDataKeyIdsResponse, error) {
	return d.s.ListDataKeyIds(ctx, r)
}

func (d dataKeyService) DeleteDataKey(ctx context.Context, r *custodyv1.DeleteDataKeyRequest) (*custodyv1.DeleteDataKeyResponse, error) {
	return d.s.DeleteDataKey(ctx, r)
}

// DataKeyServiceServer returns the DataKeyService implementation to register
// on a gRPC server that uses this server's interceptors (Register does it).
func (s *Server) DataKeyServiceServer() custodyv1.DataKeyServiceServer {
	return dataKeyService{s: s}
}

// ValidateDataKeyID checks a stored data key id: 1..MaxDataKeyIDLen
// characters from [A-Za-z0-9._:-].
func ValidateDataKeyID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: id is required", ErrInvalidArgument)
	}
	if len(id) > MaxDataKeyIDLen {
		return fmt.Errorf("%w: id is %d bytes; at most %d allowed", ErrInvalidArgument, len(id), MaxDataKeyIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return fmt.Errorf("%w: id has a character outside [A-Za-z0-9._:-] at byte %d", ErrInvalidArgument, i)
		}
	}
	return nil
}

// checkDataKeyName validates a key name before it is made part of a store
// path (the policy decides whether the caller may use it).
func checkDataKeyName(name string) error {
	if err := requireName(name); err != nil {
		return err
	}
	if err := keys.ValidateName(name); err != nil {
		return fmt.Errorf("%w: key_name: %v", ErrInvalidArgument, err)
	}
	return nil
}

func dataKeyPath(key, id string) string { return dataKeyPrefix + key + "/" + id }

// marshalDataKeyRecord builds a stored record. ctxDigest is ContextDigest.
func marshalDataKeyRecord(ctxDigest, envelope []byte) []byte {
	b := make([]byte, 0, 1+sha256.Size+len(envelope))
	b = append(b, dataKeyRecordV1)
	b = append(b, ctxDigest...)
	return append(b, envelope...)
}

// parseDataKeyRecord splits a stored record into context digest and envelope.
func parseDataKeyRecord(b []byte) (ctxDigest, envelope []byte, err error) {
	if len(b) < 1+sha256.Size+1 || b[0] != dataKeyRecordV1 {
		return nil, nil, errDataKeyCorrupt
	}
	return b[1 : 1+sha256.Size], b[1+sha256.Size:], nil
}

// contextRefused is the refusal of a context that differs from the stored
// one: the same error, code and message the policy gives a context outside
// the caller's grant, so the two cannot be told apart.
func contextRefused(ctx context.Context, key string) error {
	return fmt.Errorf("%w: identity %q, key %q, op %s", policy.ErrContextMismatch, callFrom(ctx).identity, key, policy.OpUnwrap)
}

// StoreDataKey keeps a data key (generated in the HSM, or an existing
// wrapped key after its binding is verified) under an id. It is authorised
// and budgeted as a data-key generation (OpDataKey) with the request context.
func (s *Server) StoreDataKey(ctx context.Context, req *custodyv1.StoreDataKeyRequest) (*custodyv1.StoreDataKeyResponse, error) {
	if err := checkDataKeyName(req.GetKeyName()); err != nil {
		return nil, err
	}
	if err := ValidateDataKeyID(req.GetId()); err != nil {
		return nil, err
	}
	switch src := req.GetSource().(type) {
	case *custodyv1.StoreDataKeyRequest_Generate:
		if !src.Generate {
			return nil, fmt.Errorf("%w: generate must be true, or pass wrapped_key", ErrInvalidArgument)
		}
	case *custodyv1.StoreDataKeyRequest_WrappedKey:
		if len(src.WrappedKey) == 0 {
			return nil, fmt.Errorf("%w: wrapped_key is empty", ErrInvalidArgument)
		}
	default:
		return nil, fmt.Errorf("%w: one of generate or wrapped_key is required", ErrInvalidArgument)
	}
	st, err := s.dataKeyStore()
	if err != nil {
		return nil, err
	}
	callFrom(ctx).detail = "id=" + req.GetId()
	e, d, err := s.use(ctx, policy.OpDataKey, req.GetKeyName(), req.GetContext())
	if err != nil {
		return nil, err
	}
	var envelope []byte
	var version uint32
	if req.GetGenerate() {
		v, err := e.Key.ForEncrypt()
		hk, err := s.versionKey(ctx, e, v, err)
		if err != nil {
			return nil, err
		}
		wrapped, _, err := s.hsm.GenerateDataKey(ctx, hk, false)
		if err != nil {
			return nil, err
		}
		if envelope, err = s.bind(ctx, e, hk, v.Number, wrapped, req.GetContext()); err != nil {
			return nil, err
		}
		version = v.Number
	} else {
		// Verify the binding under this key and context before keeping it,
		// so a fetch never meets an envelope that cannot open.
		hk, env, err := s.openWrapped(ctx, e, req.GetWrappedKey(), req.GetContext())
		if err != nil {
			return nil, err
		}
		if env.Format == keys.FormatSealedKey { // checked by opening it (sealedkeys.go)
			dk, err := s.openSealed(ctx, hk, env, req.GetContext(), d.AllowPlaintext)
			if err != nil {
				return nil, err
			}
			clear(dk)
		}
		if envelope, err = env.Marshal(); err != nil {
			return nil, err
		}
		version = env.Version
	}
	digest, err := keys.ContextDigest(req.GetContext())
	if err != nil {
		return nil, err
	}
	err = store.Create(ctx, st, dataKeyPath(req.GetKeyName(), req.GetId()), marshalDataKeyRecord(digest, envelope))
	if errors.Is(err, store.ErrExists) {
		return nil, errDataKeyExists
	}
	if err != nil {
		return nil, err
	}
	return &custodyv1.StoreDataKeyResponse{Id: req.GetId(), KeyVersion: version}, nil
}

// loadDataKey reads the record under id and checks that it was stored with
// encCtx. The caller must already be authorised for the key.
func (s *Server) loadDataKey(ctx context.Context, st store.Store, key, id string, encCtx map[string]string) (envelope []byte, rev int64, err error) {
	kv, err := st.Get(ctx, dataKeyPath(key, id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, errDataKeyNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	stored, envelope, err := parseDataKeyRecord(kv.Value)
	if err != nil {
		return nil, 0, err
	}
	digest, err := keys.ContextDigest(encCtx)
	if err != nil {
		return nil, 0, err
	}
	if !bytes.Equal(stored, digest) {
		return nil, 0, contextRefused(ctx, key)
	}
	return envelope, kv.Revision, nil
}

// FetchDataKey returns one stored data key: wrapped to the recipient inside
// the HSM, or in plaintext where the grant allows it. It is authorised,
// budgeted and audited exactly as CryptoService.Unwrap.
func (s *Server) FetchDataKey(ctx context.Context, req *custodyv1.FetchDataKeyRequest) (*custodyv1.FetchDataKeyResponse, error) {
	if err := checkDataKeyName(req.GetKeyName()); err != nil {
		return nil, err
	}
	if err := ValidateDataKeyID(req.GetId()); err != nil {
		return nil, err
	}
	st, err := s.dataKeyStore()
	if err != nil {
		return nil, err
	}
	callFrom(ctx).detail = "id=" + req.GetId()
	e, d, err := s.use(ctx, policy.OpUnwrap, req.GetKeyName(), req.GetContext())
	if err != nil {
		return nil, err
	}
	rk, err := deliveryTo(d, req.GetRecipientPublicKey())
	if err != nil {
		return nil, err
	}
	envelope, _, err := s.loadDataKey(ctx, st, req.GetKeyName(), req.GetId(), req.GetContext())
	if err != nil {
		return nil, err
	}
	hk, env, err := s.openWrapped(ctx, e, envelope, req.GetContext())
	if err != nil {
		return nil, err
	}
	out := &custodyv1.FetchDataKeyResponse{KeyVersion: env.Version}
	out.Plaintext, out.RecipientWrappedKey, out.RecipientWrapping, err = s.deliver(ctx, hk, env, req.GetContext(), rk, d.AllowPlaintext)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// authorizeListing decides who may list a key's ids: identities whose role
// may read key metadata (operators, officers, auditors: inventory, no
// material), and relays granted unwrap on the key by a grant without a
// context constraint. A relay whose grant is limited to some contexts is
// refused, because the listing would show ids stored under other contexts.
func (s *Server) authorizeListing(ctx context.Context, name string) error {
	c := callFrom(ctx)
	c.key = name
	if c.role == policy.RoleRelay {
		_, err := s.authorize(ctx, policy.OpUnwrap, name, nil)
		return err
	}
	return s.authorizeAdmin(ctx, policy.OpKeyRead)
}

// ListDataKeyIds returns one page of the ids stored under a key, in bytewise
// order. It never reads or returns key material beyond what the store's
// authentication needs, and is not budgeted (it uses no key).
func (s *Server) ListDataKeyIds(ctx context.Context, req *custodyv1.ListDataKeyIdsRequest) (*custodyv1.ListDataKeyIdsResponse, error) {
	name := req.GetKeyName()
	if err := checkDataKeyName(name); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > MaxDataKeyPageSize:
		return nil, fmt.Errorf("%w: page_size must be 0..%d", ErrInvalidArgument, MaxDataKeyPageSize)
	case size == 0:
		size = DefaultDataKeyPageSize
	}
	after := ""
	if tok := req.GetPageToken(); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || ValidateDataKeyID(string(b)) != nil {
			return nil, fmt.Errorf("%w: page_token is not one this server issued", ErrInvalidArgument)
		}
		after = string(b)
	}
	st, err := s.dataKeyStore()
	if err != nil {
		return nil, err
	}
	if err := s.authorizeListing(ctx, name); err != nil {
		return nil, err
	}
	if _, err := s.keys.Get(name); err != nil {
		return nil, err
	}
	prefix := dataKeyPrefix + name + "/"
	startAfter := ""
	if after != "" {
		startAfter = prefix + after
	}
	kvs, err := st.List(ctx, prefix, startAfter, size+1)
	if err != nil {
		return nil, err
	}
	out := &custodyv1.ListDataKeyIdsResponse{}
	for i, kv := range kvs {
		if i == size {
			out.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(out.Ids[len(out.Ids)-1]))
			break
		}
		out.Ids = append(out.Ids, kv.Key[len(prefix):])
	}
	callFrom(ctx).detail = fmt.Sprintf("ids=%d", len(out.Ids))
	return out, nil
}

// DeleteDataKey forgets a stored data key. It needs what a fetch needs (an
// unwrap grant matching the context it was stored with), so one tenant
// cannot delete another's keys; it is budgeted like a fetch.
func (s *Server) DeleteDataKey(ctx context.Context, req *custodyv1.DeleteDataKeyRequest) (*custodyv1.DeleteDataKeyResponse, error) {
	if err := checkDataKeyName(req.GetKeyName()); err != nil {
		return nil, err
	}
	if err := ValidateDataKeyID(req.GetId()); err != nil {
		return nil, err
	}
	st, err := s.dataKeyStore()
	if err != nil {
		return nil, err
	}
	callFrom(ctx).detail = "id=" + req.GetId()
	if _, _, err := s.use(ctx, policy.OpUnwrap, req.GetKeyName(), req.GetContext()); err != nil {
		return nil, err
	}
	path := dataKeyPath(req.GetKeyName(), req.GetId())
	_, rev, err := s.loadDataKey(ctx, st, req.GetKeyName(), req.GetId(), req.GetContext())
	if err != nil {
		return nil, err
	}
	// Delete only the record that was checked: a concurrent delete and
	// re-store under the same id must not be removed by this request.
	if err := st.Txn(ctx, []store.Cond{store.RevisionIs(path, rev)}, []store.Op{store.DeleteOp(path)}); err != nil {
		return nil, err
	}
	return &custodyv1.DeleteDataKeyResponse{}, nil
}
