package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// maxPINBytes bounds a PIN file; PKCS#11 PINs are short.
const maxPINBytes = 1024

// ReadPIN returns the HSM user PIN from pin_file or pin_env. The caller owns
// the returned slice and should zero it when done.
//
// A PIN file must be a regular file (a symlink to one is followed, as with
// Kubernetes secret mounts) that group and others cannot access; one
// trailing newline ("\n" or "\r\n") is removed. An environment variable must
// be set and non-empty. Errors wrap ErrPIN and never contain the PIN, the
// file's path or the variable's name.
func (h *HSMConfig) ReadPIN(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPIN, err)
	}
	switch {
	case h.PINFile != "" && h.PINEnv != "":
		return nil, fmt.Errorf("%w: hsm: pin_file and pin_env are mutually exclusive", ErrPIN)
	case h.PINFile != "":
		return readPINFile(h.PINFile)
	case h.PINEnv != "":
		v, ok := os.LookupEnv(h.PINEnv)
		if !ok || v == "" {
			return nil, fmt.Errorf("%w: hsm.pin_env: the named environment variable is not set or is empty", ErrPIN)
		}
		return []byte(v), nil
	default:
		return nil, fmt.Errorf("%w: hsm: neither pin_file nor pin_env is set", ErrPIN)
	}
}

// PIN is ReadPIN without a context.
func (h *HSMConfig) PIN() ([]byte, error) { return h.ReadPIN(context.Background()) }

func readPINFile(path string) ([]byte, error) {
	// O_NONBLOCK keeps a FIFO planted at the path from blocking the open;
	// the mode check below then refuses it.
	f, err := os.OpenFile(path, os.O_RDONLY|nonblock, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: hsm.pin_file: %s", ErrPIN, openMessage(err))
	}
	defer f.Close()
	// Check the file we opened, not the path, so it cannot be swapped between
	// the check and the read.
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: hsm.pin_file: cannot stat file", ErrPIN)
	}
	if msg := pinFileModeProblem(st.Mode()); msg != "" {
		return nil, fmt.Errorf("%w: hsm.pin_file: %s", ErrPIN, msg)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPINBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: hsm.pin_file: cannot read file", ErrPIN)
	}
	if len(data) > maxPINBytes {
		clear(data)
		return nil, fmt.Errorf("%w: hsm.pin_file: file is larger than %d bytes", ErrPIN, maxPINBytes)
	}
	pin := data
	if bytes.HasSuffix(pin, []byte("\r\n")) {
		pin = pin[:len(pin)-2]
	} else if bytes.HasSuffix(pin, []byte("\n")) {
		pin = pin[:len(pin)-1]
	}
	if len(pin) == 0 {
		return nil, fmt.Errorf("%w: hsm.pin_file: file is empty", ErrPIN)
	}
	out := bytes.Clone(pin)
	clear(data)
	return out, nil
}

func openMessage(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "file does not exist"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	default:
		return "cannot open file"
	}
}
