package client

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"sort"
	"strings"
	"testing"
)

// sealedVectors reads the test vectors of docs/sealed-message.md: each
// ```text block that starts with "vector:" is a list of "name: value".
func sealedVectors(t *testing.T) []map[string]string {
	t.Helper()
	f, err := os.Open("../docs/sealed-message.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]string
	var cur map[string]string
	inBlock := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```text":
			inBlock, cur = true, nil
		case line == "```" && inBlock:
			inBlock = false
			if cur != nil {
				out = append(out, cur)
			}
		case inBlock:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				t.Fatalf("vector line %q is not name: value", line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if k == "vector" {
				cur = map[string]string{}
			}
			if cur == nil {
				t.Fatalf("text block does not start with vector: (%q)", line)
			}
			cur[k] = v
		}
	}
	if len(out) != 2 {
		t.Fatalf("found %d vectors in docs/sealed-message.md, want 2", len(out))
	}
	return out
}

func unhex(t *testing.T, v map[string]string, name string) []byte {
	t.Helper()
	b, err := hex.DecodeString(v[name])
	if err != nil || v[name] == "" {
		t.Fatalf("%s.%s: %q is not hex", v["vector"], name, v[name])
	}
	return b
}

func parseContextList(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// documentedCanonical is canonical(context) written from the page's words,
// not with this package's code.
func documentedCanonical(ctx map[string]string) []byte {
	keys := make([]string, 0, len(ctx))
	for k := range ctx {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := binary.AppendUvarint(nil, uint64(len(keys)))
	for _, k := range keys {
		out = binary.AppendUvarint(out, uint64(len(k)))
		out = append(out, k...)
		out = binary.AppendUvarint(out, uint64(len(ctx[k])))
		out = append(out, ctx[k]...)
	}
	return out
}

func TestSealedMessageVectorsInDocs(t *testing.T) {
	for _, v := range sealedVectors(t) {
		t.Run(v["vector"], func(t *testing.T) {
			key, wrapped, nonce := unhex(t, v, "data_key"), unhex(t, v, "wrapped_key"), unhex(t, v, "nonce")
			pt, want := unhex(t, v, "plaintext"), unhex(t, v, "sealed")
			caller := parseContextList(v["context"])
			eff := caller
			var hdr []byte
			if conv := v["conversation"]; conv != "" {
				eff = withConversation(caller, conv)
				hdr = append([]byte{msgVersionConversation, byte(len(conv))}, conv...)
			} else {
				hdr = []byte{msgVersionMessage}
			}
			hdr = binary.BigEndian.AppendUint16(hdr, uint16(len(wrapped)))
			hdr = append(hdr, wrapped...)

			// The page's rules, computed independently with the standard library.
			canon := documentedCanonical(eff)
			if !bytes.Equal(canon, unhex(t, v, "canonical_context")) {
				t.Errorf("canonical_context: page %s, rules give %x", v["canonical_context"], canon)
			}
			digest := sha256.Sum256(canon)
			if !bytes.Equal(digest[:], unhex(t, v, "context_sha256")) {
				t.Errorf("context_sha256: page %s, computed %x", v["context_sha256"], digest)
			}
			block, _ := aes.NewCipher(key)
			gcm, _ := cipher.NewGCM(block)
			prefix := append(append([]byte(nil), hdr...), nonce...)
			aad := append(append([]byte(nil), prefix...), digest[:]...)
			if got := gcm.Seal(prefix, nonce, pt, aad); !bytes.Equal(got, want) {
				t.Errorf("sealed by the page's rules:\n got  %x\n page %x", got, want)
			}

			// This package: the same bytes, and Open's parser reads them back.
			if !bytes.Equal(canonicalContext(eff), canon) {
				t.Errorf("canonicalContext differs from the page")
			}
			got, err := sealWith(key, append([]byte(nil), hdr...), nonce, pt, eff)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("sealWith: %v\n got  %x\n page %x", err, got, want)
			}
			m, err := parseSealed(want)
			if err != nil {
				t.Fatal(err)
			}
			if m.conversationID != v["conversation"] || !bytes.Equal(m.wrappedKey, wrapped) || !bytes.Equal(m.nonce, nonce) {
				t.Fatalf("parseSealed: %+v", m)
			}
			opened, err := m.open(key, m.effectiveContext(caller))
			if err != nil || !bytes.Equal(opened, pt) {
				t.Fatalf("open: %q, %v", opened, err)
			}
			// One changed context value and it no longer opens.
			other := map[string]string{"tenant": "evil"}
			if _, err := m.open(key, m.effectiveContext(other)); err != ErrMessageAuth {
				t.Fatalf("opened under another context: %v", err)
			}
		})
	}
}
