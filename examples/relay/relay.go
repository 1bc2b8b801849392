// Package relay is an example message relay built on Custody: it stores the
// messages of each conversation encrypted under that conversation's own
// data key, which comes from custodyd (client.SealerFor) and is kept only in
// wrapped form, inside each sealed message. The relay's disk holds no
// plaintext and no usable key; reading a conversation back costs one
// audited, authorised Unwrap at custodyd.
//
// Invariants:
//   - What is written to the store is only client-sealed messages (version,
//     conversation id, wrapped data key, nonce, ciphertext); message text and
//     sender are inside the ciphertext.
//   - Every data key is bound to the relay's tenant and the conversation id
//     (the encryption context), so custodyd's grant can confine the relay to
//     its tenant, and a message moved to another conversation does not open.
//   - Plaintext data keys live only in open conversation Sealers and the
//     client's bounded cache, and are zeroed on Close.
//
// See README.md beside this file for what a compromised relay can and
// cannot obtain.
package relay

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/custodyhq/custody/client"
)

// Sentinel errors.
var (
	// ErrInvalid: a request the relay refuses before doing anything.
	ErrInvalid = errors.New("invalid request")
	// ErrClosed: the relay was closed.
	ErrClosed = errors.New("relay closed")
)

// MaxText bounds one message's text.
const MaxText = 16 << 10

// Config configures a Relay.
type Config struct {
	// KeyName is the Custody key (ENCRYPT_AES256_GCM) that wraps the
	// conversations' data keys. The relay's identity needs the datakey and
	// unwrap operations on it.
	KeyName string
	// Tenant is bound into every data key's encryption context as
	// "tenant"; a grant's context_match can confine the relay to it.
	Tenant string
	// DBPath is the relay's message store (a bbolt file).
	DBPath string
}

// Message is one message as a reader sees it.
type Message struct {
	Seq    uint64    `json:"seq"`
	Sender string    `json:"sender"`
	Text   string    `json:"text"`
	Time   time.Time `json:"time"`
}

// payload is what is sealed: everything about a message but its sequence.
type payload struct {
	Sender string    `json:"sender"`
	Text   string    `json:"text"`
	Time   time.Time `json:"time"`
}

// Relay stores and serves conversations.
type Relay struct {
	cfg Config
	c   *client.Client
	db  *bolt.DB
	now func() time.Time

	mu      sync.Mutex
	sealers map[string]*client.Sealer // conversation id -> open sealer
	closed  bool
}

// Open opens (or creates) the relay's store. The relay uses c for every
// call to custodyd and does not close it.
func Open(c *client.Client, cfg Config) (*Relay, error) {
	if cfg.KeyName == "" || cfg.Tenant == "" || cfg.DBPath == "" {
		return nil, fmt.Errorf("%w: key name, tenant and db path are required", ErrInvalid)
	}
	db, err := bolt.Open(cfg.DBPath, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("relay store: %w", err)
	}
	return &Relay{cfg: cfg, c: c, db: db, now: time.Now, sealers: map[string]*client.Sealer{}}, nil
}

// encCtx is the encryption context of every data key; SealerFor adds the
// conversation id.
func (r *Relay) encCtx() map[string]string { return map[string]string{"tenant": r.cfg.Tenant} }

func bucketName(conv string) []byte { return []byte("conv/" + conv) }

func checkConversation(conv string) error {
	if conv == "" || len(conv) > 128 {
		return fmt.Errorf("%w: conversation id must be 1..128 bytes", ErrInvalid)
	}
	return nil
}

// sealer returns the conversation's open Sealer, asking custodyd for a new
// data key when there is none or the current one is used up.
func (r *Relay) sealer(ctx context.Context, conv string) (*client.Sealer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	if s := r.sealers[conv]; s != nil && s.Remaining() > 0 {
		return s, nil
	} else if s != nil {
		s.Close()
		delete(r.sealers, conv)
	}
	s, err := r.c.SealerFor(ctx, r.cfg.KeyName, conv, r.encCtx())
	if err != nil {
		return nil, err
	}
	r.sealers[conv] = s
	return s, nil
}

// Post seals a message into conversation conv and stores it; it returns the
// message's sequence number in the conversation. The first message of a
// conversation (in this process) costs one GenerateDataKey at custodyd;
// the rest are sealed locally.
func (r *Relay) Post(ctx context.Context, conv, sender, text string) (uint64, error) {
	if err := checkConversation(conv); err != nil {
		return 0, err
	}
	if sender == "" || len(text) > MaxText {
		return 0, fmt.Errorf("%w: sender is required and text is at most %d bytes", ErrInvalid, MaxText)
	}
	s, err := r.sealer(ctx, conv)
	if err != nil {
		return 0, err
	}
	pt, err := json.Marshal(payload{Sender: sender, Text: text, Time: r.now().UTC()})
	if err != nil {
		return 0, err
	}
	defer clear(pt)
	sealed, err := s.Seal(pt)
	if errors.Is(err, client.ErrSealerExhausted) {
		// Raced with another Post to the last message of this key.
		if s, err = r.sealer(ctx, conv); err == nil {
			sealed, err = s.Seal(pt)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("seal: %w", err)
	}
	var seq uint64
	err = r.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketName(conv))
		if err != nil {
			return err
		}
		if seq, err = b.NextSequence(); err != nil {
			return err
		}
		return b.Put(binary.BigEndian.AppendUint64(nil, seq), sealed)
	})
	if err != nil {
		return 0, fmt.Errorf("relay store: %w", err)
	}
	return seq, nil
}

// Read returns the messages of conv after sequence number after, at most
// limit of them (limit <= 0 means 100). Each data key is unwrapped by
// custodyd once and then found in the client's cache.
func (r *Relay) Read(ctx context.Context, conv string, after uint64, limit int) ([]Message, error) {
	if err := checkConversation(conv); err != nil {
		return nil, err
	}
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	type stored struct {
		seq    uint64
		sealed []byte
	}
	var rows []stored
	err := r.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName(conv))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, after+1)); k != nil && len(rows) < limit; k, v = c.Next() {
			rows = append(rows, stored{seq: binary.BigEndian.Uint64(k), sealed: append([]byte(nil), v...)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("relay store: %w", err)
	}
	out := make([]Message, 0, len(rows))
	for _, row := range rows {
		pt, err := r.c.Open(ctx, r.cfg.KeyName, row.sealed, r.encCtx())
		if err != nil {
			return out, fmt.Errorf("message %d: %w", row.seq, err)
		}
		var p payload
		err = json.Unmarshal(pt, &p)
		clear(pt)
		if err != nil {
			return out, fmt.Errorf("message %d: %w", row.seq, err)
		}
		out = append(out, Message{Seq: row.seq, Sender: p.Sender, Text: p.Text, Time: p.Time})
	}
	return out, nil
}

// Conversations lists the conversation ids in the store (metadata the relay
// keeps in clear, as any relay must to route messages).
func (r *Relay) Conversations() ([]string, error) {
	var ids []string
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if len(name) > 5 && string(name[:5]) == "conv/" {
				ids = append(ids, string(name[5:]))
			}
			return nil
		})
	})
	return ids, err
}

// Close zeroes every open Sealer's data key and closes the store.
func (r *Relay) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	for id, s := range r.sealers {
		s.Close()
		delete(r.sealers, id)
	}
	return r.db.Close()
}
