package hsm

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// URI is the part of an RFC 7512 PKCS#11 URI that selects a token:
//
//	pkcs11:token=custody;serial=1a2b?module-path=/usr/lib/softhsm/libsofthsm2.so
//
// Path attributes (token, serial, manufacturer, model, slot-id) select the
// token; the query attribute module-path names the library. module-path is
// also accepted among the path attributes, as several tools write it there.
// A PIN is never taken from a URI: pin-value is refused, so a PIN cannot end
// up in a config file or a process listing by this route.
type URI struct {
	ModulePath   string
	Token        string // CKA_LABEL of the token (token info label)
	Serial       string
	Manufacturer string
	Model        string
	SlotID       *uint
}

// ParseURI parses an RFC 7512 URI. Unknown attributes are refused so that a
// typo does not silently select another token.
func ParseURI(s string) (URI, error) {
	var u URI
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, fmt.Errorf("%w: pkcs11 uri must start with \"pkcs11:\"", ErrInvalidInput)
	}
	path, query, _ := strings.Cut(rest, "?")
	set := func(name, raw string) error {
		v, err := url.PathUnescape(raw)
		if err != nil {
			return fmt.Errorf("%w: pkcs11 uri: attribute %q: bad percent-encoding", ErrInvalidInput, name)
		}
		switch name {
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
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return fmt.Errorf("%w: pkcs11 uri: slot-id %q is not a number", ErrInvalidInput, v)
			}
			id := uint(n)
			u.SlotID = &id
		case "pin-value":
			return fmt.Errorf("%w: pkcs11 uri: pin-value is refused; give the PIN through a file or environment variable", ErrInvalidInput)
		case "pin-source", "module-name", "library-manufacturer", "library-description", "library-version", "object", "id", "type", "slot-description", "slot-manufacturer":
			// Accepted by RFC 7512 but not used to select a token here.
		default:
			return fmt.Errorf("%w: pkcs11 uri: unknown attribute %q", ErrInvalidInput, name)
		}
		return nil
	}
	for _, part := range []struct{ s, sep string }{{path, ";"}, {query, "&"}} {
		if part.s == "" {
			continue
		}
		for _, kv := range strings.Split(part.s, part.sep) {
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return u, fmt.Errorf("%w: pkcs11 uri: attribute %q has no value", ErrInvalidInput, k)
			}
			if err := set(k, v); err != nil {
				return u, err
			}
		}
	}
	if u.ModulePath == "" {
		return u, fmt.Errorf("%w: pkcs11 uri: module-path is required", ErrInvalidInput)
	}
	if u.Token == "" && u.Serial == "" && u.SlotID == nil {
		return u, fmt.Errorf("%w: pkcs11 uri: name the token with token=, serial= or slot-id=", ErrInvalidInput)
	}
	return u, nil
}

// String renders the URI back in RFC 7512 form.
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
	return "pkcs11:" + strings.Join(p, ";") + "?module-path=" + url.PathEscape(u.ModulePath)
}
