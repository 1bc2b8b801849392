package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// On-disk layout (one bbolt file):
//
//	bucket "kv":   key -> 8-byte big-endian mod revision || value
//	bucket "meta": "format" -> boltFormat, "revision" -> 8-byte big-endian store revision
//
// Keeping the revision beside the value makes a CAS read one record.
var (
	kvBucket    = []byte("kv")
	metaBucket  = []byte("meta")
	formatKey   = []byte("format")
	revisionKey = []byte("revision")
	boltFormat  = []byte("custody-store/1")
)

const revLen = 8

// Defaults for BoltOptions.
const (
	DefaultOpenTimeout = 500 * time.Millisecond
	DefaultWatchBuffer = 1024
)

// BoltOptions tunes OpenBolt. The zero value is ready to use.
type BoltOptions struct {
	// OpenTimeout bounds the wait for the file lock, so that a second
	// process on the same file fails with ErrLocked instead of hanging.
	// Zero means DefaultOpenTimeout.
	OpenTimeout time.Duration
	// WatchBuffer is how many undelivered events a watcher may hold before
	// it is ended with ErrWatchLagged. Zero means DefaultWatchBuffer.
	WatchBuffer int
}

// Bolt is the embedded Store backend: one bbolt file, fsynced on every
// committed transaction, locked against other processes while open.
type Bolt struct {
	db          *bolt.DB
	path        string
	watchBuffer int
	hub         *hub
	// wsem admits one writer at a time, and lets a writer waiting for its
	// turn give up when its context ends. Publishing to watchers happens
	// while holding it, which fixes event order to commit order.
	wsem   chan struct{}
	closed atomic.Bool
	elect  boltElections
}

var _ Store = (*Bolt)(nil)

// errNoChange rolls back a write transaction that turned out to change
// nothing, which saves the commit's fsync and keeps the revision still.
var errNoChange = errors.New("no change")

// OpenBolt opens or creates the store file at path with mode 0600. It refuses
// a file that group or others may access (ErrInsecureFile), and fails with
// ErrLocked when another process holds the file past opts.OpenTimeout.
func OpenBolt(path string, opts BoltOptions) (*Bolt, error) {
	if opts.OpenTimeout <= 0 {
		opts.OpenTimeout = DefaultOpenTimeout
	}
	if opts.WatchBuffer <= 0 {
		opts.WatchBuffer = DefaultWatchBuffer
	}
	if fi, err := os.Stat(path); err == nil {
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("%w: %s has mode %#o, want 0600", ErrInsecureFile, path, perm)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      opts.OpenTimeout,
		FreelistType: bolt.FreelistMapType,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s (gave up after %v)", ErrLocked, path, opts.OpenTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(kvBucket); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		switch f := meta.Get(formatKey); {
		case f == nil:
			return meta.Put(formatKey, boltFormat)
		case !bytes.Equal(f, boltFormat):
			return fmt.Errorf("%w: unsupported format %q", ErrCorrupt, f)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return &Bolt{
		db:          db,
		path:        path,
		watchBuffer: opts.WatchBuffer,
		hub:         newHub(),
		wsem:        make(chan struct{}, 1),
	}, nil
}

// Path returns the file the store was opened on.
func (b *Bolt) Path() string { return b.path }

func (b *Bolt) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.closed.Load() {
		return ErrClosed
	}
	return nil
}

// mapErr turns bbolt's closed-database error into ErrClosed.
func mapErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// decode splits a stored record into revision and value, copying the value
// out of bbolt's read-only memory map.
func decode(key, rec []byte) (KV, error) {
	if len(rec) < revLen {
		return KV{}, fmt.Errorf("%w: record %q is %d bytes", ErrCorrupt, key, len(rec))
	}
	return KV{
		Key:      string(key),
		Value:    append(make([]byte, 0, len(rec)-revLen), rec[revLen:]...),
		Revision: int64(binary.BigEndian.Uint64(rec)),
	}, nil
}

// Get implements Store.
func (b *Bolt) Get(ctx context.Context, key string) (KV, error) {
	if err := checkKey(key); err != nil {
		return KV{}, err
	}
	if err := b.check(ctx); err != nil {
		return KV{}, err
	}
	var kv KV
	err := b.db.View(func(tx *bolt.Tx) error {
		rec := tx.Bucket(kvBucket).Get([]byte(key))
		if rec == nil {
			return fmt.Errorf("%w: %q", ErrNotFound, key)
		}
		var err error
		kv, err = decode([]byte(key), rec)
		return err
	})
	return kv, mapErr(err)
}

// List implements Store.
func (b *Bolt) List(ctx context.Context, prefix, startAfter string, limit int) ([]KV, error) {
	if err := b.check(ctx); err != nil {
		return nil, err
	}
	var out []KV
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(kvBucket).Cursor()
		var k, v []byte
		if startAfter >= prefix {
			k, v = c.Seek([]byte(startAfter))
			if k != nil && string(k) == startAfter {
				k, v = c.Next()
			}
		} else {
			k, v = c.Seek([]byte(prefix))
		}
		for ; k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
			if limit > 0 && len(out) == limit {
				break
			}
			if len(out)%256 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			kv, err := decode(k, v)
			if err != nil {
				return err
			}
			out = append(out, kv)
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return out, nil
}

// Txn implements Store. The commit is fsynced before Txn returns.
func (b *Bolt) Txn(ctx context.Context, conds []Cond, ops []Op) error {
	_, err := b.TxnRev(ctx, conds, ops)
	return err
}

// TxnRev implements RevTxner: Txn, reporting the revision it committed at.
func (b *Bolt) TxnRev(ctx context.Context, conds []Cond, ops []Op) (int64, error) {
	if err := checkTxn(conds, ops); err != nil {
		return 0, err
	}
	if err := b.check(ctx); err != nil {
		return 0, err
	}
	select {
	case b.wsem <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-b.wsem }()
	if err := b.check(ctx); err != nil {
		return 0, err
	}

	var events []Event
	var committed int64
	err := b.db.Update(func(tx *bolt.Tx) error {
		kvb, meta := tx.Bucket(kvBucket), tx.Bucket(metaBucket)
		for _, c := range conds {
			rec := kvb.Get([]byte(c.Key))
			var (
				value []byte
				rev   int64
			)
			if rec != nil {
				kv, err := decode([]byte(c.Key), rec)
				if err != nil {
					return err
				}
				value, rev = kv.Value, kv.Revision
			}
			if !condHolds(c, rec != nil, value, rev) {
				return fmt.Errorf("%w: %s condition on %q", ErrConflict, condName(c.Type), c.Key)
			}
		}

		cur, err := readRevision(meta)
		if err != nil {
			return err
		}
		next := cur + 1
		for _, op := range ops {
			key := []byte(op.Key)
			switch op.Type {
			case OpPut:
				rec := make([]byte, revLen+len(op.Value))
				binary.BigEndian.PutUint64(rec, uint64(next))
				copy(rec[revLen:], op.Value)
				if err := kvb.Put(key, rec); err != nil {
					return err
				}
				events = append(events, Event{Type: OpPut, KV: KV{Key: op.Key, Value: cloneBytes(op.Value), Revision: next}})
			case OpDelete:
				if kvb.Get(key) == nil {
					continue
				}
				if err := kvb.Delete(key); err != nil {
					return err
				}
				events = append(events, Event{Type: OpDelete, KV: KV{Key: op.Key, Revision: next}})
			}
		}
		if len(events) == 0 {
			return errNoChange
		}
		var buf [revLen]byte
		binary.BigEndian.PutUint64(buf[:], uint64(next))
		committed = next
		return meta.Put(revisionKey, buf[:])
	})
	if errors.Is(err, errNoChange) {
		return 0, nil
	}
	if err != nil {
		return 0, mapErr(err)
	}
	b.hub.publish(events)
	return committed, nil
}

func condName(t CondType) string {
	switch t {
	case CondMissing:
		return "missing"
	case CondExists:
		return "exists"
	case CondRevision:
		return "revision"
	case CondValue:
		return "value"
	}
	return "unknown"
}

func readRevision(meta *bolt.Bucket) (int64, error) {
	v := meta.Get(revisionKey)
	switch len(v) {
	case 0:
		return 0, nil
	case revLen:
		return int64(binary.BigEndian.Uint64(v)), nil
	}
	return 0, fmt.Errorf("%w: store revision is %d bytes", ErrCorrupt, len(v))
}

// Watch implements Store.
func (b *Bolt) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
	if err := b.check(ctx); err != nil {
		return nil, err
	}
	// Registering while no writer is between commit and publish means the
	// watcher sees exactly the transactions that commit after this point.
	select {
	case b.wsem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-b.wsem }()
	return b.hub.add(ctx, prefix, b.watchBuffer)
}

// Revision implements Store.
func (b *Bolt) Revision(ctx context.Context) (int64, error) {
	if err := b.check(ctx); err != nil {
		return 0, err
	}
	var rev int64
	err := b.db.View(func(tx *bolt.Tx) error {
		var err error
		rev, err = readRevision(tx.Bucket(metaBucket))
		return err
	})
	return rev, mapErr(err)
}

// Close implements Store. It waits for running transactions and releases the
// file lock.
func (b *Bolt) Close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	b.hub.close()
	b.closeElections()
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", b.path, err)
	}
	return nil
}
