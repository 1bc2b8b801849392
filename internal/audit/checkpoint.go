package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/custodyhq/custody/internal/strictjson"
)

// Checkpoint is a signed statement that the record with sequence Seq has hash
// Head. Checkpoints are appended to checkpoints.log and handed to an AnchorSink
// so that a copy outside the log directory can later prove truncation.
//
// StoreRevision is the metadata store's anchor revision when the checkpoint
// was signed (0 when the log was given none): a store found at start with
// an older revision than the newest checkpoint was rolled back.
type Checkpoint struct {
	Seq           uint64    `json:"seq"`
	Head          Digest    `json:"head"`
	Time          time.Time `json:"time"`
	InstanceID    string    `json:"instance_id"`
	StoreRevision uint64    `json:"store_revision,omitempty"`
	Signature     []byte    `json:"signature"`
}

// PruneMarker is a signed statement, written to pruned.json by Prune, that
// records before FirstSeq were deleted on purpose and that record FirstSeq has
// prev_hash PrevHash. CheckpointSeq names the checkpoint that covered the
// deleted segments when they were deleted.
type PruneMarker struct {
	FirstSeq      uint64    `json:"first_seq"`
	PrevHash      Digest    `json:"prev_hash"`
	CheckpointSeq uint64    `json:"checkpoint_seq"`
	Time          time.Time `json:"time"`
	InstanceID    string    `json:"instance_id"`
	Signature     []byte    `json:"signature"`
}

// AnchorSink receives each checkpoint for storage outside the log directory.
// Anchor is called off the Append path, one checkpoint at a time, with a
// context that carries Options.SinkTimeout.
type AnchorSink interface {
	Anchor(ctx context.Context, cp Checkpoint) error
}

// signedBytes is what a checkpoint's signature covers. A checkpoint with a
// store revision signs it under its own domain, so the revision cannot be
// stripped to pass an older form off.
func (c *Checkpoint) signedBytes() []byte {
	b := []byte("custody.audit.checkpoint.v1\n")
	if c.StoreRevision != 0 {
		b = []byte("custody.audit.checkpoint.v2\n")
	}
	b = binary.BigEndian.AppendUint64(b, c.Seq)
	b = appendBytes(b, c.Head)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Time.UnixNano()))
	b = appendBytes(b, []byte(c.InstanceID))
	if c.StoreRevision != 0 {
		b = binary.BigEndian.AppendUint64(b, c.StoreRevision)
	}
	return b
}

func (m *PruneMarker) signedBytes() []byte {
	b := []byte("custody.audit.pruned.v1\n")
	b = binary.BigEndian.AppendUint64(b, m.FirstSeq)
	b = appendBytes(b, m.PrevHash)
	b = binary.BigEndian.AppendUint64(b, m.CheckpointSeq)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Time.UnixNano()))
	return appendBytes(b, []byte(m.InstanceID))
}

// Verify checks the checkpoint's signature with the audit public key.
func (c *Checkpoint) Verify(pub crypto.PublicKey) error {
	return verifySig(pub, c.signedBytes(), c.Signature)
}

// Verify checks the marker's signature with the audit public key.
func (m *PruneMarker) Verify(pub crypto.PublicKey) error {
	return verifySig(pub, m.signedBytes(), m.Signature)
}

// sign signs SHA-256(msg). ECDSA and RSA (PKCS #1 v1.5) signers get the digest
// with crypto.SHA256, as a PKCS#11 CKM_ECDSA key expects; Ed25519 signs the
// 32-byte digest as its message.
func sign(s crypto.Signer, msg []byte) ([]byte, error) {
	d := sha256.Sum256(msg)
	var opts crypto.SignerOpts = crypto.SHA256
	if _, ok := s.Public().(ed25519.PublicKey); ok {
		opts = crypto.Hash(0)
	}
	sig, err := s.Sign(rand.Reader, d[:], opts)
	if err != nil {
		return nil, fmt.Errorf("audit: sign: %w", err)
	}
	return sig, nil
}

func verifySig(pub crypto.PublicKey, msg, sig []byte) error {
	d := sha256.Sum256(msg)
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, d[:], sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, d[:], sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, d[:], sig) == nil
	default:
		return fmt.Errorf("%w: unsupported public key type %T", ErrBadSignature, pub)
	}
	if !ok {
		return ErrBadSignature
	}
	return nil
}

// appendLine appends one JSON line to path and fsyncs it. A torn final line
// left by an earlier failed write is cut off first, so it cannot merge with
// the new line. A newly created file also gets its directory entry fsynced.
func appendLine(path string, v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	end, err := goodEnd(f)
	if err != nil {
		return err
	}
	if err := f.Truncate(end); err != nil {
		return err
	}
	if _, err := f.WriteAt(line, end); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if created {
		return syncDir(filepath.Dir(path))
	}
	return nil
}

// goodEnd returns the offset just after the last newline of f (0 if none).
func goodEnd(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	buf := make([]byte, 4096)
	for end := size; end > 0; {
		start := max(end-int64(len(buf)), 0)
		n, err := f.ReadAt(buf[:end-start], start)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return start + int64(i) + 1, nil
		}
		end = start
	}
	return 0, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// FileSink appends each checkpoint as a JSON line to a file (ideally on
// other storage than the log) and fsyncs it. It is safe for concurrent use.
type FileSink struct {
	Path string
	mu   sync.Mutex
}

// Anchor implements AnchorSink.
func (s *FileSink) Anchor(ctx context.Context, cp Checkpoint) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := appendLine(s.Path, cp); err != nil {
		return fmt.Errorf("audit: file sink: %w", err)
	}
	return nil
}

// HTTPSink POSTs each checkpoint as JSON to URL. Any 2xx status is success.
// The request is bounded by the context's deadline (Options.SinkTimeout).
type HTTPSink struct {
	URL    string
	Client *http.Client // nil means http.DefaultClient
}

// Anchor implements AnchorSink.
func (s *HTTPSink) Anchor(ctx context.Context, cp Checkpoint) error {
	body, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("audit: http sink: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	c := s.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("audit: http sink: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("audit: http sink: status %d", resp.StatusCode)
	}
	return nil
}

// ReadCheckpoints returns the checkpoints in a log directory's
// checkpoints.log, in file order, skipping an unterminated final line. It
// does not verify signatures.
func ReadCheckpoints(dir string) ([]Checkpoint, error) {
	var out []Checkpoint
	_, err := scanCheckpoints(dir, func(cp Checkpoint, line int) error {
		out = append(out, cp)
		return nil
	})
	return out, err
}

const checkpointsFile = "checkpoints.log"
const prunedFile = "pruned.json"

// scanCheckpoints calls fn for each complete line of checkpoints.log and
// returns the length of an unterminated final line (a torn write), if any.
func scanCheckpoints(dir string, fn func(cp Checkpoint, line int) error) (int64, error) {
	f, err := os.Open(filepath.Join(dir, checkpointsFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	lr := newLineReader(f, 0)
	for n := 1; ; n++ {
		line, start, complete, err := lr.next()
		if errors.Is(err, io.EOF) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		if !complete {
			return lr.off - start, nil
		}
		var cp Checkpoint
		if err := strictjson.Unmarshal(line, &cp); err != nil {
			return 0, &VerifyError{Segment: checkpointsFile, Line: n, Kind: KindBadSignature,
				Reason: "unparseable checkpoint"}
		}
		if err := fn(cp, n); err != nil {
			return 0, err
		}
	}
}

func readPruneMarker(dir string) (*PruneMarker, error) {
	b, err := os.ReadFile(filepath.Join(dir, prunedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var m PruneMarker
	if err := strictjson.Unmarshal(bytes.TrimSpace(b), &m); err != nil {
		return nil, &VerifyError{Segment: prunedFile, Line: 1, Kind: KindBadSignature, Reason: "unparseable prune marker"}
	}
	return &m, nil
}
