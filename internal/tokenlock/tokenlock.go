// Package tokenlock keeps one custodyd at a time serving a vault's HSM
// token: a lease held in a private data object on the token itself, where
// only a logged-in user (the PIN) can read or change it.
//
// Why the token and not the store: the store is a file root can copy (the
// attack is a second custodyd with a copied store and its own audit
// directory); the token is the one thing both instances must share, and a
// private token object cannot be forged or removed without the PIN. A
// network HSM shared by two hosts holds the lease for both. PKCS#11 has no
// compare-and-swap, so acquisition is create-then-check: every contender
// writes its own lease object, reads all of them back, and the earliest live
// one wins; the others remove theirs and refuse to serve. A holder renews
// its lease (a new object replaces the old) every TTL/3 and checks it is
// still the winner; one that finds itself displaced stops serving.
//
// After a crash (SIGKILL) the dead holder's lease stays on the token until
// it expires (TTL, default 30s), with one exception: a lease written by a
// process on the same host and boot that no longer exists (its pid is gone,
// or now belongs to a process started at another time) is stale at once, so
// a restart on the same host does not wait.
//
// Replicas: custodyd replicas of one vault share the token and one store
// (etcd). Each lease names its store (Options.Cluster, the etcd cluster ID
// and the vault's prefix); leases of the same store coexist, and one of
// another store, or of a lone instance, is refused as before. The name is
// not a secret: root could start an instance that claims it. What keeps
// such an instance from serving a copied store is the store's anchor and
// the audit high-water mark held on the token, not this lease.
package tokenlock

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Label is the token label of lease objects.
const Label = "custody:instance-lock:v1"

// DefaultTTL is how long a lease lasts without renewal.
const DefaultTTL = 30 * time.Second

// ErrHeld: another custodyd holds the token.
var ErrHeld = errors.New("tokenlock: another custodyd holds this HSM token")

// Objects is the token's data-object store (*hsm.Module).
type Objects interface {
	DataObjects(ctx context.Context, label string) ([][]byte, error)
	CreateDataObject(ctx context.Context, label string, value []byte) error
	ReplaceDataObject(ctx context.Context, label string, match func([]byte) bool, value []byte) (bool, error)
	DestroyDataObjects(ctx context.Context, label string, match func([]byte) bool) (int, error)
}

// Lease is one lease object's content.
type Lease struct {
	Holder   string    `json:"holder"` // random per process
	Host     string    `json:"host"`
	BootID   string    `json:"boot_id"`
	PID      int       `json:"pid"`
	Started  uint64    `json:"started"` // process start time (clock ticks since boot)
	Acquired time.Time `json:"acquired"`
	Expires  time.Time `json:"expires"`
	Listen   string    `json:"listen,omitempty"`
	// Cluster names the shared store of a replica (Options.Cluster); ""
	// for a custodyd that must be alone on the token.
	Cluster string `json:"cluster,omitempty"`
}

// blocks reports whether a live lease o keeps l off the token: it belongs
// to another cluster, or either is a lone instance.
func (l Lease) blocks(o Lease) bool { return l.Cluster == "" || o.Cluster != l.Cluster }

func (l Lease) String() string {
	s := fmt.Sprintf("custodyd pid %d on %s (listening on %s) since %s, lease until %s",
		l.PID, l.Host, l.Listen, l.Acquired.UTC().Format(time.RFC3339), l.Expires.UTC().Format(time.RFC3339))
	if l.Cluster != "" {
		s += ", replica of " + l.Cluster
	}
	return s
}

// before orders contenders: the earliest acquisition wins, ties by holder.
func (l Lease) before(o Lease) bool {
	if !l.Acquired.Equal(o.Acquired) {
		return l.Acquired.Before(o.Acquired)
	}
	return l.Holder < o.Holder
}

// Options configure a Lock.
type Options struct {
	TTL    time.Duration
	Listen string // shown to a refused contender
	// Cluster, when set, lets other holders with the same value hold the
	// token at the same time: replicas of one vault on one shared store
	// (the store's identity). Empty: this custodyd must be alone.
	Cluster string
	Now     func() time.Time
	Logger  *slog.Logger
	// Alive reports whether a same-host, same-boot process with this pid
	// and start time still runs (default: /proc). Tests replace it.
	Alive func(pid int, started uint64) bool
}

// Lock is this process's lease on one token.
type Lock struct {
	obj Objects
	o   Options
	me  Lease

	mu   sync.Mutex
	held bool
}

// New prepares a lease for this process; Acquire takes it.
func New(obj Objects, o Options) (*Lock, error) {
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Alive == nil {
		o.Alive = processAlive
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	pid := os.Getpid()
	started, _ := processStart(pid)
	return &Lock{obj: obj, o: o, me: Lease{Holder: hex.EncodeToString(id), Host: host, BootID: bootID(), PID: pid, Started: started, Listen: o.Listen, Cluster: o.Cluster}}, nil
}

func (l *Lock) mine(v []byte) bool {
	var le Lease
	return json.Unmarshal(v, &le) == nil && le.Holder == l.me.Holder
}

// read returns every lease on the token, with the ones that fail to parse
// counted separately.
func (l *Lock) read(ctx context.Context) ([]Lease, int, error) {
	vals, err := l.obj.DataObjects(ctx, Label)
	if err != nil {
		return nil, 0, err
	}
	var out []Lease
	bad := 0
	for _, v := range vals {
		var le Lease
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.DisallowUnknownFields()
		if dec.Decode(&le) != nil || le.Holder == "" {
			bad++
			continue
		}
		out = append(out, le)
	}
	return out, bad, nil
}

// stale reports whether le can be removed: expired, or written by a process
// on this host and boot that is gone.
func (l *Lock) stale(le Lease, now time.Time) bool {
	if !now.Before(le.Expires) {
		return true
	}
	return le.Host == l.me.Host && le.BootID != "" && le.BootID == l.me.BootID && !l.o.Alive(le.PID, le.Started)
}

// Acquire takes the lease or returns an error wrapping ErrHeld that names
// the holder.
func (l *Lock) Acquire(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.o.Now()
	leases, bad, err := l.read(ctx)
	if err != nil {
		return fmt.Errorf("read the token's instance lease: %w", err)
	}
	if bad > 0 {
		return fmt.Errorf("%w: %d unreadable lease object(s) %q on the token; refusing to guess", ErrHeld, bad, Label)
	}
	for _, le := range leases {
		if le.Holder == l.me.Holder {
			continue
		}
		if !l.stale(le, now) {
			if !l.me.blocks(le) {
				continue // a replica of the same cluster
			}
			return fmt.Errorf("%w: %s", ErrHeld, le)
		}
		holder := le.Holder
		if _, err := l.obj.DestroyDataObjects(ctx, Label, func(v []byte) bool { return holderOf(v) == holder }); err != nil {
			return fmt.Errorf("remove a stale instance lease: %w", err)
		}
		l.o.Logger.Warn("tokenlock: removed the stale lease of a custodyd that is gone", "was", le.String())
	}
	l.me.Acquired, l.me.Expires = now, now.Add(l.o.TTL)
	b, _ := json.Marshal(l.me)
	if err := l.obj.CreateDataObject(ctx, Label, b); err != nil {
		return fmt.Errorf("write the instance lease: %w", err)
	}
	if err := l.checkLocked(ctx); err != nil {
		_, _ = l.obj.DestroyDataObjects(context.WithoutCancel(ctx), Label, l.mine)
		return err
	}
	l.held = true
	return nil
}

// checkLocked reads the leases back and fails unless this one is the
// earliest live lease.
func (l *Lock) checkLocked(ctx context.Context) error {
	leases, bad, err := l.read(ctx)
	if err != nil {
		return fmt.Errorf("read the token's instance lease: %w", err)
	}
	if bad > 0 {
		return fmt.Errorf("%w: unreadable lease object on the token", ErrHeld)
	}
	now := l.o.Now()
	found := false
	for _, le := range leases {
		if le.Holder == l.me.Holder {
			found = true
			continue
		}
		if !l.stale(le, now) && le.before(l.me) && l.me.blocks(le) {
			return fmt.Errorf("%w: %s", ErrHeld, le)
		}
	}
	if !found {
		return fmt.Errorf("%w: this custodyd's lease was removed from the token (paused longer than its lease?)", ErrHeld)
	}
	return nil
}

// Renew extends the lease and checks it is still this process's. An error
// wrapping ErrHeld means the lease is lost: stop serving.
func (l *Lock) Renew(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return fmt.Errorf("%w: lease not held", ErrHeld)
	}
	next := l.me
	next.Expires = l.o.Now().Add(l.o.TTL)
	b, _ := json.Marshal(next)
	ok, err := l.obj.ReplaceDataObject(ctx, Label, l.mine, b)
	if err != nil {
		return fmt.Errorf("renew the instance lease: %w", err)
	}
	if !ok {
		l.held = false
		return fmt.Errorf("%w: this custodyd's lease was removed from the token", ErrHeld)
	}
	l.me = next
	if err := l.checkLocked(ctx); err != nil {
		l.held = false
		return err
	}
	return nil
}

// Run renews the lease every TTL/3 until ctx ends, and calls lost once if
// the lease is lost (another holder, or the object removed). Renewal
// failures that are not a loss (the token briefly unreachable) are logged
// and retried; if they last past the lease's expiry the lease is lost too.
func (l *Lock) Run(ctx context.Context, lost func(error)) {
	t := time.NewTicker(l.o.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := l.Renew(ctx)
		switch {
		case err == nil:
		case errors.Is(err, ErrHeld):
			lost(err)
			return
		case ctx.Err() != nil:
			return
		default:
			l.mu.Lock()
			expired := !l.o.Now().Before(l.me.Expires)
			l.mu.Unlock()
			if expired {
				lost(fmt.Errorf("%w: could not renew the lease before it expired: %v", ErrHeld, err))
				return
			}
			l.o.Logger.Warn("tokenlock: renewing the instance lease failed; retrying", "err", err)
		}
	}
}

// Release removes this process's lease (clean shutdown).
func (l *Lock) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return nil
	}
	l.held = false
	_, err := l.obj.DestroyDataObjects(ctx, Label, l.mine)
	return err
}

// Holder is this process's lease.
func (l *Lock) Holder() Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.me
}

func holderOf(v []byte) string {
	var le Lease
	if json.Unmarshal(v, &le) != nil {
		return ""
	}
	return le.Holder
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// processStart returns field 22 of /proc/PID/stat: the start time in clock
// ticks after boot, which tells a pid's current process from an earlier one.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; it ends at the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, errors.New("malformed stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func processAlive(pid int, started uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := processStart(pid)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist) // unsure: treat as alive
	}
	return started == 0 || st == started
}
