package client

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sync"

	custodyv1 "github.com/custodyhq/custody/api/custody/v1"
)

// Sealed message layout (all integers big-endian; docs/sealed-message.md is
// the specification, with test vectors checked by
// TestSealedMessageVectorsInDocs). The AAD of the AES-256-GCM ciphertext is
// every byte before it (header, wrapped key, nonce) followed by SHA-256 of
// the canonical encryption context, so neither the header nor the context
// can be changed undetected.
//
//	per message (version 1):
//	  0      1  version = 1
//	  1      2  wrapped key length W (1..65535)
//	  3      W  wrapped key, as returned by GenerateDataKey
//	  3+W   12  random nonce
//	  15+W   …  ciphertext || 16-byte tag
//
//	conversation (version 2):
//	  0      1  version = 2
//	  1      1  conversation ID length L (1..255)
//	  2      L  conversation ID
//	  2+L    2  wrapped key length W
//	  4+L    W  wrapped key
//	  4+L+W 12  nonce = sealer prefix (4 random bytes) || message counter (8)
//	  16+L+W …  ciphertext || 16-byte tag
//
// A conversation's data key is bound (server-side) to the caller's context
// plus ConversationContextKey = conversation ID, so it unwraps only for
// that conversation.
const (
	msgVersionMessage      = 1
	msgVersionConversation = 2
	nonceSize              = 12
	tagSize                = 16
	maxConversationID      = 255

	// ConversationContextKey is the encryption-context entry that SealerFor
	// adds to bind a data key to its conversation. It is reserved: callers
	// may not set it themselves.
	ConversationContextKey = "custody.conversation"
)

// checkRequest refuses, before any RPC, what custodyd would refuse anyway
// or what this package reserves.
func (c *Client) checkRequest(keyName string, encCtx map[string]string) error {
	if c.cache.isClosed() {
		return fmt.Errorf("client: %w", ErrClosed)
	}
	if keyName == "" {
		return fmt.Errorf("%w: key name is empty", ErrInvalidArgument)
	}
	if _, ok := encCtx[ConversationContextKey]; ok {
		return fmt.Errorf("%w: encryption context key %q is reserved", ErrInvalidArgument, ConversationContextKey)
	}
	return nil
}

// newDataKey asks custodyd for a fresh data key bound to encCtx. The caller
// zeroes the returned plaintext key.
func (c *Client) newDataKey(ctx context.Context, keyName string, encCtx map[string]string) (key, wrapped []byte, err error) {
	resp, err := c.crypto.GenerateDataKey(ctx, &custodyv1.GenerateDataKeyRequest{KeyName: keyName, Context: encCtx})
	if err != nil {
		return nil, nil, err
	}
	key = resp.GetPlaintext()
	if len(key) != DataKeySize {
		clear(key)
		return nil, nil, fmt.Errorf("%w: data key is %d bytes, want %d", ErrBadResponse, len(key), DataKeySize)
	}
	wrapped = resp.GetWrappedKey()
	if len(wrapped) == 0 || len(wrapped) > maxWrappedKey {
		clear(key)
		return nil, nil, fmt.Errorf("%w: wrapped key is %d bytes", ErrBadResponse, len(wrapped))
	}
	return key, wrapped, nil
}

// dataKey returns the plaintext data key for wrapped, from the cache or
// from custodyd's Unwrap (then cached). The caller zeroes it.
func (c *Client) dataKey(ctx context.Context, keyName string, wrapped []byte, encCtx map[string]string) ([]byte, error) {
	id := dataKeyID(keyName, encCtx, wrapped)
	if k := c.cache.get(id); k != nil {
		return k, nil
	}
	resp, err := c.crypto.Unwrap(ctx, &custodyv1.UnwrapRequest{KeyName: keyName, WrappedKey: wrapped, Context: encCtx})
	if err != nil {
		return nil, err
	}
	key := resp.GetPlaintext()
	if len(key) != DataKeySize {
		clear(key)
		return nil, fmt.Errorf("%w: data key is %d bytes, want %d", ErrBadResponse, len(key), DataKeySize)
	}
	c.cache.put(id, key)
	return key, nil
}

// Seal encrypts plaintext under a new data key from custodyd, bound to
// keyName and encCtx, and returns a self-contained sealed message: the
// wrapped data key, a nonce and the AES-256-GCM ciphertext
// (docs/sealed-message.md). The data key is zeroed before Seal returns.
// Open with the same key name and context.
//
// Seal needs a plaintext data key from custodyd: the relay's grant on
// keyName must allow datakey with allow_plaintext (otherwise custodyd
// answers PERMISSION_DENIED). Opening needs unwrap with allow_plaintext.
// A relay whose grant only pins recipient keys (key transport) uses
// GenerateDataKey/Unwrap with recipient_public_key (RelayPublicKeyDER)
// and DecryptTransported instead.
func (c *Client) Seal(ctx context.Context, keyName string, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	if err := c.checkRequest(keyName, encCtx); err != nil {
		return nil, err
	}
	key, wrapped, err := c.newDataKey(ctx, keyName, encCtx)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	return sealMessage(key, wrapped, plaintext, encCtx)
}

// sealMessage builds a version 1 sealed message with a random nonce.
func sealMessage(key, wrapped, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	if len(wrapped) == 0 || len(wrapped) > maxWrappedKey {
		return nil, fmt.Errorf("%w: wrapped key is %d bytes", ErrInvalidArgument, len(wrapped))
	}
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	hdr := make([]byte, 0, 3+len(wrapped)+nonceSize+len(plaintext)+tagSize)
	hdr = append(hdr, msgVersionMessage)
	hdr = binary.BigEndian.AppendUint16(hdr, uint16(len(wrapped)))
	hdr = append(hdr, wrapped...)
	return sealWith(key, hdr, nonce[:], plaintext, encCtx)
}

// sealWith appends nonce and the ciphertext of plaintext to hdr, with AAD =
// hdr || nonce || contextDigest(encCtx).
func sealWith(key, hdr, nonce, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	out := append(hdr, nonce...)
	aad := messageAAD(out, encCtx)
	return aead.Seal(out, nonce, plaintext, aad), nil
}

func messageAAD(prefix []byte, encCtx map[string]string) []byte {
	d := sha256.Sum256(canonicalContext(encCtx))
	aad := make([]byte, 0, len(prefix)+len(d))
	return append(append(aad, prefix...), d[:]...)
}

// sealedMessage is a parsed sealed message.
type sealedMessage struct {
	conversationID string // empty for version 1
	wrappedKey     []byte
	prefix         []byte // every byte before the ciphertext, nonce included
	nonce          []byte
	ciphertext     []byte
}

func parseSealed(b []byte) (*sealedMessage, error) {
	if len(b) < 1 {
		return nil, fmt.Errorf("%w: empty", ErrMessageFormat)
	}
	m := &sealedMessage{}
	rest := b[1:]
	switch b[0] {
	case msgVersionMessage:
	case msgVersionConversation:
		if len(rest) < 1 || rest[0] == 0 || len(rest) < 1+int(rest[0]) {
			return nil, fmt.Errorf("%w: bad conversation id", ErrMessageFormat)
		}
		m.conversationID = string(rest[1 : 1+int(rest[0])])
		rest = rest[1+int(rest[0]):]
	default:
		return nil, fmt.Errorf("%w: unsupported version %d", ErrMessageFormat, b[0])
	}
	if len(rest) < 2 {
		return nil, fmt.Errorf("%w: too short", ErrMessageFormat)
	}
	w := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if w == 0 || len(rest) < w+nonceSize+tagSize {
		return nil, fmt.Errorf("%w: too short", ErrMessageFormat)
	}
	m.wrappedKey = rest[:w]
	m.nonce = rest[w : w+nonceSize]
	m.ciphertext = rest[w+nonceSize:]
	m.prefix = b[:len(b)-len(m.ciphertext)]
	return m, nil
}

// effectiveContext is the context the message's data key is bound to.
func (m *sealedMessage) effectiveContext(encCtx map[string]string) map[string]string {
	if m.conversationID == "" {
		return encCtx
	}
	return withConversation(encCtx, m.conversationID)
}

func withConversation(encCtx map[string]string, id string) map[string]string {
	out := make(map[string]string, len(encCtx)+1)
	for k, v := range encCtx {
		out[k] = v
	}
	out[ConversationContextKey] = id
	return out
}

func (m *sealedMessage) open(key []byte, encCtx map[string]string) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, m.nonce, m.ciphertext, messageAAD(m.prefix, encCtx))
	if err != nil {
		return nil, ErrMessageAuth
	}
	return pt, nil
}

// Open decrypts a message made by Seal or by a conversation Sealer, with
// the key name and encryption context it was sealed with. The data key
// comes from the cache or from custodyd's Unwrap (authorised, budgeted and
// audited there; the grant needs unwrap with allow_plaintext) and is cached
// for the next message that carries it.
func (c *Client) Open(ctx context.Context, keyName string, sealed []byte, encCtx map[string]string) ([]byte, error) {
	if err := c.checkRequest(keyName, encCtx); err != nil {
		return nil, err
	}
	m, err := parseSealed(sealed)
	if err != nil {
		return nil, err
	}
	eff := m.effectiveContext(encCtx)
	key, err := c.dataKey(ctx, keyName, m.wrappedKey, eff)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	return m.open(key, eff)
}

// Sealer seals the messages of one conversation under one data key, with a
// counter nonce, so that a conversation costs custodyd one GenerateDataKey
// and each reader one Unwrap. It refuses to seal more than the configured
// limit of messages (ErrSealerExhausted); then ask SealerFor for a new one.
// A Sealer is safe for concurrent use; Close zeroes its key.
type Sealer struct {
	mu     sync.Mutex
	key    []byte
	hdr    []byte // version, conversation id, wrapped key
	prefix [4]byte
	next   uint64
	limit  uint64
	encCtx map[string]string // effective context, conversation included
}

// SealerFor returns a Sealer for conversationID (1..255 bytes) with a new
// data key from custodyd bound to keyName and encCtx plus the conversation
// ID. Messages it seals are opened with Open and the same key name and
// encCtx (the conversation ID travels in each message). Like Seal, it needs
// a grant with datakey and allow_plaintext.
func (c *Client) SealerFor(ctx context.Context, keyName, conversationID string, encCtx map[string]string) (*Sealer, error) {
	if err := c.checkRequest(keyName, encCtx); err != nil {
		return nil, err
	}
	if len(conversationID) == 0 || len(conversationID) > maxConversationID {
		return nil, fmt.Errorf("%w: conversation id length %d outside 1..%d", ErrInvalidArgument, len(conversationID), maxConversationID)
	}
	eff := withConversation(encCtx, conversationID)
	key, wrapped, err := c.newDataKey(ctx, keyName, eff)
	if err != nil {
		return nil, err
	}
	s, err := newSealer(key, wrapped, conversationID, eff, c.cfg.ConversationLimit)
	clear(key) // newSealer keeps its own copy
	if err != nil {
		return nil, err
	}
	// This process may read the conversation back (a relay storing and
	// serving it): spare it the Unwrap.
	c.cache.put(dataKeyID(keyName, eff, wrapped), s.key)
	return s, nil
}

func newSealer(key, wrapped []byte, conversationID string, eff map[string]string, limit uint64) (*Sealer, error) {
	s := &Sealer{key: append([]byte(nil), key...), limit: limit, encCtx: eff}
	if _, err := rand.Read(s.prefix[:]); err != nil {
		clear(s.key)
		return nil, fmt.Errorf("nonce prefix: %w", err)
	}
	s.hdr = append(s.hdr, msgVersionConversation, byte(len(conversationID)))
	s.hdr = append(s.hdr, conversationID...)
	s.hdr = binary.BigEndian.AppendUint16(s.hdr, uint16(len(wrapped)))
	s.hdr = append(s.hdr, wrapped...)
	return s, nil
}

// Seal encrypts one message of the conversation. It needs no call to
// custodyd.
func (s *Sealer) Seal(plaintext []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key == nil {
		return nil, fmt.Errorf("sealer: %w", ErrClosed)
	}
	if s.next >= s.limit || s.next == math.MaxUint64 {
		return nil, ErrSealerExhausted
	}
	var nonce [nonceSize]byte
	copy(nonce[:4], s.prefix[:])
	binary.BigEndian.PutUint64(nonce[4:], s.next)
	s.next++
	hdr := make([]byte, 0, len(s.hdr)+nonceSize+len(plaintext)+tagSize)
	hdr = append(hdr, s.hdr...)
	return sealWith(s.key, hdr, nonce[:], plaintext, s.encCtx)
}

// Remaining returns how many more messages the Sealer will seal.
func (s *Sealer) Remaining() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key == nil {
		return 0
	}
	return s.limit - s.next
}

// Close zeroes the Sealer's data key; later Seal calls fail with ErrClosed.
func (s *Sealer) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.key)
	s.key = nil
}

// SealStream encrypts everything read from r to w in the CSTY chunked
// format (docs/file-format.md), under a new data key bound to keyName and
// encCtx. It returns the number of plaintext bytes read. The data key is
// zeroed before it returns. Like Seal, it needs datakey with
// allow_plaintext; OpenStream needs unwrap with allow_plaintext.
func (c *Client) SealStream(ctx context.Context, keyName string, encCtx map[string]string, r io.Reader, w io.Writer) (int64, error) {
	if err := c.checkRequest(keyName, encCtx); err != nil {
		return 0, err
	}
	key, wrapped, err := c.newDataKey(ctx, keyName, encCtx)
	if err != nil {
		return 0, err
	}
	defer clear(key)
	h, err := NewStreamHeader(wrapped, DefaultChunkSize)
	if err != nil {
		return 0, err
	}
	return EncryptStream(ctx, w, r, h, key)
}

// OpenStream decrypts a CSTY stream from r to w with the key name and
// encryption context it was sealed with, and returns the number of
// plaintext bytes written. Each chunk is written only once it
// authenticates, but a stream altered or cut later fails only when that
// point is reached: on error, discard everything written to w.
func (c *Client) OpenStream(ctx context.Context, keyName string, encCtx map[string]string, r io.Reader, w io.Writer) (int64, error) {
	if err := c.checkRequest(keyName, encCtx); err != nil {
		return 0, err
	}
	h, err := ReadStreamHeader(r)
	if err != nil {
		return 0, err
	}
	key, err := c.dataKey(ctx, keyName, h.WrappedKey(), encCtx)
	if err != nil {
		return 0, err
	}
	defer clear(key)
	return DecryptStream(ctx, w, r, h, key)
}

// Encrypt encrypts a small payload inside custodyd (the key never leaves
// the HSM) and returns custodyd's ciphertext envelope.
func (c *Client) Encrypt(ctx context.Context, keyName string, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	if err := c.checkRequest(keyName, nil); err != nil {
		return nil, err
	}
	resp, err := c.crypto.Encrypt(ctx, &custodyv1.EncryptRequest{KeyName: keyName, Plaintext: plaintext, Context: encCtx})
	if err != nil {
		return nil, err
	}
	return resp.GetCiphertext(), nil
}

// Decrypt decrypts a ciphertext made by Encrypt with the same key name and
// encryption context, inside custodyd. With Config.CoalesceDecrypts,
// concurrent calls share BatchDecrypt requests.
func (c *Client) Decrypt(ctx context.Context, keyName string, ciphertext []byte, encCtx map[string]string) ([]byte, error) {
	if err := c.checkRequest(keyName, nil); err != nil {
		return nil, err
	}
	req := &custodyv1.DecryptRequest{KeyName: keyName, Ciphertext: ciphertext, Context: encCtx}
	var resp *custodyv1.DecryptResponse
	var err error
	if c.coalesce != nil && coalescible(ctx) {
		resp, err = c.coalesce.decrypt(ctx, req)
	} else {
		resp, err = c.crypto.Decrypt(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	return resp.GetPlaintext(), nil
}
