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
//     under "dk/<key>/<context digest>/<id>" in the authenticated store. A
//     data key is never stored, logged or put in an error in clear.
//   - Ids are scoped by the encryption context they are stored with (its
//     keyed digest is part of the path), so two tenants using the same id
//     never meet: a caller gets the same answer for another context's id as
//     for one that does not exist, and storing never reports that another
//     context holds the id.
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
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

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

// Stored record formats. The first byte says which:
//
//	0x02 || wrapped-key envelope, under dk/<key>/<context digest hex>/<id>
//	0x01 || SHA-256 of the canonical context (32) || wrapped-key envelope,
//	        under dk/<key>/<id> (written before ids were scoped by context;
//	        still read, never written)
//
// The context itself is never stored: only its keyed digest (the one the
// audit log records), and the envelope binds the full context again under
// the HSM key.
const (
	dataKeyRecordV1 = 0x01
	dataKeyRecordV2 = 0x02
)

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

// dataKeyPath is where id lives for a context digest.
func dataKeyPath(key string, ctxDigest []byte, id string) string {
	return dataKeyPrefix + key + "/" + hex.EncodeToString(ctxDigest) + "/" + id
}

// IsStoredDataKey reports whether a store key holds a stored data key.
// They stay out of the store's anchor (see store.AuthOptions): relays write
// them at a high rate, and each write is on the audit record instead.
func IsStoredDataKey(key string) bool { return strings.HasPrefix(key, dataKeyPrefix) }

// legacyDataKeyPath is where a v1 record lives.
func legacyDataKeyPath(key, id string) string { return dataKeyPrefix + key + "/" + id }

// parseLegacyRecord splits a v1 record into its unkeyed context digest and
// envelope.
func parseLegacyRecord(b []byte) (ctxDigest, envelope []byte, err error) {
	if len(b) < 1+sha256.Size+1 || b[0] != dataKeyRecordV1 {
		return nil, nil, errDataKeyCorrupt
	}
	return b[1 : 1+sha256.Size], b[1+sha256.Size:], nil
}

// dataKeyRef is one stored record found for an id under a context.
type dataKeyRef struct {
	path     string
	envelope []byte
	rev      int64
}

// findDataKey returns the record stored under id with encCtx, or
// errDataKeyNotFound — also when a record exists under another context,
// which the caller must not be able to tell apart. The caller must already
// be authorised for the key.
func (s *Server) findDataKey(ctx context.Context, st store.Store, key, id string, encCtx map[string]string) (dataKeyRef, error) {
	path := dataKeyPath(key, s.digester.Digest(encCtx), id)
	kv, err := st.Get(ctx, path)
	switch {
	case err == nil:
		if len(kv.Value) < 2 || kv.Value[0] != dataKeyRecordV2 {
			return dataKeyRef{}, errDataKeyCorrupt
		}
		return dataKeyRef{path: path, envelope: kv.Value[1:], rev: kv.Revision}, nil
	case !errors.Is(err, store.ErrNotFound):
		return dataKeyRef{}, err
	}
	legacy := legacyDataKeyPath(key, id)
	kv, err = st.Get(ctx, legacy)
	if errors.Is(err, store.ErrNotFound) {
		return dataKeyRef{}, errDataKeyNotFound
	}
	if err != nil {
		return dataKeyRef{}, err
	}
	stored, envelope, err := parseLegacyRecord(kv.Value)
	if err != nil {
		return dataKeyRef{}, err
	}
	digest, err := keys.LegacyContextDigest(encCtx)
	if err != nil {
		return dataKeyRef{}, err
	}
	if !bytes.Equal(stored, digest) {
		return dataKeyRef{}, errDataKeyNotFound
	}
	return dataKeyRef{path: legacy, envelope: envelope, rev: kv.Revision}, nil
}

// StoreDataKey keeps a data key (generated in the HSM, or an existing
// wrapped key after its binding is verified) under an id, scoped to the
// request's context. It is authorised and budgeted as its declaration says
// (a data-key generation).
func (s *Server) StoreDataKey(ctx context.Context, req *custodyv1.StoreDataKeyRequest) (*custodyv1.StoreDataKeyResponse, error) {
	if err := checkKeyName(req.GetKeyName()); err != nil {
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
	e, d, err := s.access(ctx, req.GetKeyName(), req.GetContext())
	if err != nil {
		return nil, err
	}
	if _, err := s.findDataKey(ctx, st, req.GetKeyName(), req.GetId(), req.GetContext()); err == nil {
		return nil, errDataKeyExists
	} else if !errors.Is(err, errDataKeyNotFound) {
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
	callFrom(ctx).version = version
	if err := s.intent(ctx, "store data key id="+req.GetId()); err != nil {
		return nil, err
	}
	path := dataKeyPath(req.GetKeyName(), s.digester.Digest(req.GetContext()), req.GetId())
	err = store.Create(ctx, st, path, append([]byte{dataKeyRecordV2}, envelope...))
	if errors.Is(err, store.ErrExists) {
		return nil, errDataKeyExists
	}
	if err != nil {
		return nil, err
	}
	return &custodyv1.StoreDataKeyResponse{Id: req.GetId(), KeyVersion: version}, nil
}

// FetchDataKey returns one stored data key: wrapped to the recipient inside
// the HSM, or in plaintext where the grant allows it. It is authorised,
// budgeted and audited exactly as CryptoService.Unwrap.
func (s *Server) FetchDataKey(ctx context.Context, req *custodyv1.FetchDataKeyRequest) (*custodyv1.FetchDataKeyResponse, error) {
	if err := checkKeyName(req.GetKeyName()); err != nil {
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
	e, d, err := s.access(ctx, req.GetKeyName(), req.GetContext())
	if err != nil {
		return nil, err
	}
	rk, err := deliveryTo(d, req.GetRecipientPublicKey())
	if err != nil {
		return nil, err
	}
	ref, err := s.findDataKey(ctx, st, req.GetKeyName(), req.GetId(), req.GetContext())
	if err != nil {
		return nil, err
	}
	hk, env, err := s.openWrapped(ctx, e, ref.envelope, req.GetContext())
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
// refused, because the listing shows ids stored under every context.
func (s *Server) authorizeListing(ctx context.Context, name string) error {
	c := callFrom(ctx)
	c.key = name
	if c.role == policy.RoleRelay {
		_, err := c.snap.AuthorizeCaller(c.identity, c.spki, c.role, policy.OpUnwrap, name, nil)
		return err
	}
	return nil
}

// ListDataKeyIds returns one page of the ids stored under a key, in bytewise
// order (an id stored under two contexts is listed twice). It never reads or
// returns key material beyond what the store's authentication needs, and is
// not budgeted (it uses no key).
func (s *Server) ListDataKeyIds(ctx context.Context, req *custodyv1.ListDataKeyIdsRequest) (*custodyv1.ListDataKeyIdsResponse, error) {
	name := req.GetKeyName()
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > MaxDataKeyPageSize:
		return nil, fmt.Errorf("%w: page_size must be 0..%d", ErrInvalidArgument, MaxDataKeyPageSize)
	case size == 0:
		size = DefaultDataKeyPageSize
	}
	startAfter := ""
	prefix := dataKeyPrefix + name + "/"
	if tok := req.GetPageToken(); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || !strings.HasPrefix(string(b), prefix) || len(b) > store.MaxKeySize {
			return nil, fmt.Errorf("%w: page_token is not one this server issued", ErrInvalidArgument)
		}
		startAfter = string(b)
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
	kvs, err := st.List(ctx, prefix, startAfter, size+1)
	if err != nil {
		return nil, err
	}
	out := &custodyv1.ListDataKeyIdsResponse{}
	for i, kv := range kvs {
		if i == size {
			out.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(kvs[i-1].Key))
			break
		}
		rest := kv.Key[len(prefix):]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			rest = rest[j+1:] // v2: <context digest>/<id>
		}
		out.Ids = append(out.Ids, rest)
	}
	callFrom(ctx).detail = fmt.Sprintf("ids=%d", len(out.Ids))
	return out, nil
}

// DeleteDataKey forgets a stored data key. It needs what a fetch needs (an
// unwrap grant matching the context it was stored with), so one tenant
// cannot delete another's keys, and its declaration keeps disclosure orders
// out: an order only ever allows the reads it names. It is budgeted like a
// fetch.
func (s *Server) DeleteDataKey(ctx context.Context, req *custodyv1.DeleteDataKeyRequest) (*custodyv1.DeleteDataKeyResponse, error) {
	if err := checkKeyName(req.GetKeyName()); err != nil {
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
	if _, _, err := s.access(ctx, req.GetKeyName(), req.GetContext()); err != nil {
		return nil, err
	}
	ref, err := s.findDataKey(ctx, st, req.GetKeyName(), req.GetId(), req.GetContext())
	if err != nil {
		return nil, err
	}
	if err := s.intent(ctx, "delete data key id="+req.GetId()); err != nil {
		return nil, err
	}
	// Delete only the record that was checked: a concurrent delete and
	// re-store under the same id must not be removed by this request.
	if err := st.Txn(ctx, []store.Cond{store.RevisionIs(ref.path, ref.rev)}, []store.Op{store.DeleteOp(ref.path)}); err != nil {
		return nil, err
	}
	return &custodyv1.DeleteDataKeyResponse{}, nil
}
