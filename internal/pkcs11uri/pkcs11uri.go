// Package pkcs11uri is the one RFC 7512 PKCS#11 URI parser: custodyd's
// token (package hsm) and an officer's key on a token (custodyctl) are both
// named with it, so the two cannot disagree on what a URI means.
//
// Invariants:
//   - A PIN is never taken from a URI: pin-value and pin-source are refused,
//     so a PIN cannot reach a config file or a process listing this way.
//   - Nothing is guessed: an unknown attribute, an attribute given twice, a
//     missing module-path, or a token named by anything but exactly one of
//     token=, serial= and slot-id= is an error, so a typo never silently
//     selects another token.
package pkcs11uri

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every parse error.
var ErrInvalid = errors.New("pkcs11 uri")

// URI is what a PKCS#11 URI selects: a module, one token, and optionally one
// object on it.
//
//	pkcs11:token=custody;object=alice?module-path=/usr/lib/softhsm/libsofthsm2.so
type URI struct {
	ModulePath   string
	Token        string // token label
	Serial       string
	SlotID       *uint
	Manufacturer string // informational: checked by nobody, kept for String
	Model        string
	Object       string // object label (CKA_LABEL)
	ID           []byte // object id (CKA_ID), percent-decoded
	Type         string // object class: "private", "public", "secret-key", ...
}

// Parse parses s. module-path may be a path or a query attribute (tools
// write it in both places).
func Parse(s string) (URI, error) {
	var u URI
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, fmt.Errorf("%w: must start with \"pkcs11:\"", ErrInvalid)
	}
	path, query, _ := strings.Cut(rest, "?")
	seen := map[string]bool{}
	for _, part := range []struct{ s, sep string }{{path, ";"}, {query, "&"}} {
		if part.s == "" {
			continue
		}
		for _, kv := range strings.Split(part.s, part.sep) {
			if kv == "" {
				continue
			}
			k, raw, ok := strings.Cut(kv, "=")
			if !ok {
				return u, fmt.Errorf("%w: attribute %q has no value", ErrInvalid, k)
			}
			if seen[k] {
				return u, fmt.Errorf("%w: attribute %q is given twice", ErrInvalid, k)
			}
			seen[k] = true
			v, err := url.PathUnescape(raw)
			if err != nil {
				return u, fmt.Errorf("%w: attribute %q: bad percent-encoding", ErrInvalid, k)
			}
			if err := u.set(k, v); err != nil {
				return u, err
			}
		}
	}
	if u.ModulePath == "" {
		return u, fmt.Errorf("%w: module-path is required", ErrInvalid)
	}
	n := 0
	for _, set := range []bool{u.Token != "", u.Serial != "", u.SlotID != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return u, fmt.Errorf("%w: name the token with exactly one of token=, serial= or slot-id=", ErrInvalid)
	}
	return u, nil
}

func (u *URI) set(k, v string) error {
	switch k {
	case "module-path":
		u.ModulePath = v
	case "token":
		u.Token = v
	case "serial":
		u.Serial = v
	case "manufacturer":
		u.Manufacturer = v
	case "model":
		u.Model = v
	case "slot-id":
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return fmt.Errorf("%w: slot-id %q is not a number", ErrInvalid, v)
		}
		id := uint(n)
		u.SlotID = &id
	case "object":
		u.Object = v
	case "id":
		u.ID = []byte(v)
	case "type":
		u.Type = v
	case "pin-value", "pin-source":
		return fmt.Errorf("%w: %s is refused; give the PIN through a file or an environment variable", ErrInvalid, k)
	case "module-name", "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer":
		// RFC 7512 attributes that describe rather than select: accepted.
	default:
		return fmt.Errorf("%w: unknown attribute %q", ErrInvalid, k)
	}
	return nil
}

// String renders the URI in RFC 7512 form (selectors in the path,
// module-path in the query).
func (u URI) String() string {
	var p []string
	add := func(k, v string) {
		if v != "" {
			p = append(p, k+"="+url.PathEscape(v))
		}
	}
	add("token", u.Token)
	add("serial", u.Serial)
	add("manufacturer", u.Manufacturer)
	add("model", u.Model)
	if u.SlotID != nil {
		p = append(p, "slot-id="+strconv.FormatUint(uint64(*u.SlotID), 10))
	}
	add("object", u.Object)
	add("id", string(u.ID))
	add("type", u.Type)
	return "pkcs11:" + strings.Join(p, ";") + "?module-path=" + url.PathEscape(u.ModulePath)
}
