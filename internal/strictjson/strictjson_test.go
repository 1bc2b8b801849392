package strictjson

import (
	"errors"
	"testing"
)

type doc struct {
	A int   `json:"a"`
	B []int `json:"b"`
}

func TestUnmarshalRefusesTrailingBracketsAndUnknownFields(t *testing.T) {
	for _, tc := range []struct {
		in    string
		ok    bool
		trail bool
	}{
		{`{"a":1}`, true, false},
		{" {\"a\":1,\"b\":[2]} \n\t", true, false},
		{`{"a":1}}`, false, true},
		{`{"a":1}]`, false, true},
		{`{"a":1} {"a":2}`, false, true},
		{`{"a":1}x`, false, true},
		{`{"a":1,"c":2}`, false, false},
		{`{"a":`, false, false},
		{``, false, false},
	} {
		var d doc
		err := Unmarshal([]byte(tc.in), &d)
		if (err == nil) != tc.ok {
			t.Errorf("Unmarshal(%q) = %v, want ok=%t", tc.in, err, tc.ok)
		}
		if tc.trail && !errors.Is(err, ErrTrailingData) {
			t.Errorf("Unmarshal(%q) = %v, want ErrTrailingData", tc.in, err)
		}
	}
}
