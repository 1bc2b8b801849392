// Package strictjson decodes JSON that custodyd itself wrote or that an
// operator hands to it, refusing anything it did not expect.
//
// Invariant: Unmarshal accepts exactly one JSON value whose object fields are
// all known to the destination type, followed by nothing but white space.
// encoding/json's Decoder.More alone lets a stray closing bracket or brace
// through (`{"a":1}}` decodes); this package does not.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
)

// ErrTrailingData reports bytes after the one JSON value.
var ErrTrailingData = errors.New("json: trailing data after the value")

// Unmarshal decodes b into v like json.Unmarshal, but refuses unknown object
// fields and any non-white-space byte after the value.
func Unmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if len(bytes.TrimSpace(b[dec.InputOffset():])) != 0 {
		return ErrTrailingData
	}
	return nil
}
