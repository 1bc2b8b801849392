package keys

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// docPath is the document whose vectors TestDocumentedVectors checks.
const docPath = "../../docs/envelope.md"

// vectorInputs are the fields of a documented vector that are chosen;
// every other field is computed from these.
var vectorInputs = map[byte][]string{
	FormatCiphertext: {"name", "format", "master_key", "key_id", "version", "iv", "context", "plaintext"},
	FormatWrappedKey: {"name", "format", "master_key", "key_id", "version", "iv", "context", "data_key"},
	FormatSealedKey:  {"name", "format", "master_key", "key_id", "version", "iv", "context", "data_key"},
}

// vectorOutputs are the computed fields, in the order the document lists them.
var vectorOutputs = map[byte][]string{
	FormatCiphertext: {"context_encoding", "context_digest", "aad", "envelope"},
	FormatWrappedKey: {"context_encoding", "context_digest", "wrapped_key", "aad", "tag", "envelope"},
	FormatSealedKey:  {"context_encoding", "context_digest", "aad", "envelope"},
}

// computeVector derives a vector's outputs from its inputs with Go's
// AES-GCM (which matches the HSM's CKM_AES_GCM) and the test-only AES-KWP.
func computeVector(t testing.TB, in map[string]string) map[string]string {
	t.Helper()
	format := mustHex(t, in["format"])
	if len(format) != 1 {
		t.Fatalf("%s: format must be one byte", in["name"])
	}
	master := mustHex(t, in["master_key"])
	keyID := mustHex(t, in["key_id"])
	version, err := strconv.ParseUint(in["version"], 10, 32)
	if err != nil {
		t.Fatalf("%s: version: %v", in["name"], err)
	}
	iv := mustHex(t, in["iv"])
	var ctx map[string]string
	if err := json.Unmarshal([]byte(in["context"]), &ctx); err != nil {
		t.Fatalf("%s: context: %v", in["name"], err)
	}
	block, err := aes.NewCipher(master)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	canon, err := CanonicalContext(ctx)
	if err != nil {
		t.Fatalf("%s: %v", in["name"], err)
	}
	digest, err := LegacyContextDigest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{
		"context_encoding": hex.EncodeToString(canon),
		"context_digest":   hex.EncodeToString(digest),
	}
	var env *Envelope
	switch format[0] {
	case FormatCiphertext:
		aad, err := CiphertextAAD(keyID, uint32(version), ctx)
		if err != nil {
			t.Fatalf("%s: %v", in["name"], err)
		}
		sealed := gcm.Seal(nil, iv, mustHex(t, in["plaintext"]), aad)
		if env, err = NewCiphertext(keyID, uint32(version), iv, sealed); err != nil {
			t.Fatalf("%s: %v", in["name"], err)
		}
		out["aad"] = hex.EncodeToString(aad)
	case FormatWrappedKey:
		wrapped, err := kwpWrap(master, mustHex(t, in["data_key"]))
		if err != nil {
			t.Fatal(err)
		}
		aad, err := WrappedKeyAAD(keyID, uint32(version), wrapped, ctx)
		if err != nil {
			t.Fatalf("%s: %v", in["name"], err)
		}
		tag := gcm.Seal(nil, iv, nil, aad)
		if env, err = NewWrappedKey(keyID, uint32(version), iv, wrapped, tag); err != nil {
			t.Fatalf("%s: %v", in["name"], err)
		}
		out["wrapped_key"] = hex.EncodeToString(wrapped)
		out["aad"] = hex.EncodeToString(aad)
		out["tag"] = hex.EncodeToString(tag)
	case FormatSealedKey:
		aad, err := SealedKeyAAD(keyID, uint32(version), ctx)
		if err != nil {
			t.Fatalf("%s: %v", in["name"], err)
		}
		sealed := gcm.Seal(nil, iv, mustHex(t, in["data_key"]), aad)
		if env, err = NewSealedKey(keyID, uint32(version), iv, sealed); err != nil {
			t.Fatalf("%s: %v", in["name"], err)
		}
		out["aad"] = hex.EncodeToString(aad)
	default:
		t.Fatalf("%s: unknown format %x", in["name"], format)
	}
	wire, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	out["envelope"] = hex.EncodeToString(wire)
	return out
}

type docVector map[string]string

type annotation struct {
	vector, field string
	hex           string
	line          int
}

// parseDoc reads the ```vector and ```annotated blocks of docs/envelope.md.
func parseDoc(t *testing.T) ([]docVector, []annotation) {
	t.Helper()
	f, err := os.Open(docPath)
	if err != nil {
		t.Fatalf("open %s: %v", docPath, err)
	}
	defer f.Close()
	var (
		vectors []docVector
		notes   []annotation
		cur     docVector
		note    *annotation
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		switch {
		case cur != nil:
			if text == "```" {
				vectors = append(vectors, cur)
				cur = nil
				continue
			}
			name, value, ok := strings.Cut(text, ":")
			if !ok {
				t.Fatalf("%s:%d: vector line without ':'", docPath, line)
			}
			name, value = strings.TrimSpace(name), strings.TrimSpace(value)
			if _, dup := cur[name]; dup {
				t.Fatalf("%s:%d: field %q repeated", docPath, line, name)
			}
			cur[name] = value
		case note != nil:
			if text == "```" {
				notes = append(notes, *note)
				note = nil
				continue
			}
			if i := strings.IndexByte(text, '#'); i >= 0 {
				text = text[:i]
			}
			note.hex += strings.Join(strings.Fields(text), "")
		case text == "```vector":
			cur = docVector{}
		case strings.HasPrefix(text, "```annotated "):
			f := strings.Fields(strings.TrimPrefix(text, "```annotated "))
			if len(f) != 2 {
				t.Fatalf("%s:%d: want ```annotated <vector> <field>", docPath, line)
			}
			note = &annotation{vector: f[0], field: f[1], line: line}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil || note != nil {
		t.Fatalf("%s: unterminated block", docPath)
	}
	return vectors, notes
}

// TestDocumentedVectors recomputes every vector in docs/envelope.md from its
// inputs and checks every documented output, decrypts or unwraps each
// documented envelope, and checks that each annotated byte breakdown
// concatenates to the field it annotates. The document and the code cannot
// drift apart without this test failing.
func TestDocumentedVectors(t *testing.T) {
	vectors, notes := parseDoc(t)
	byName := map[string]docVector{}
	seen := map[byte]int{}
	for _, v := range vectors {
		name := v["name"]
		if name == "" {
			t.Fatalf("vector without a name: %v", v)
		}
		if _, dup := byName[name]; dup {
			t.Fatalf("vector %q defined twice", name)
		}
		byName[name] = v
		t.Run(name, func(t *testing.T) {
			format := mustHex(t, v["format"])
			if len(format) != 1 || vectorInputs[format[0]] == nil {
				t.Fatalf("format %q is not a known format", v["format"])
			}
			seen[format[0]]++
			fields := append(slices.Clone(vectorInputs[format[0]]), vectorOutputs[format[0]]...)
			for name := range v {
				if !slices.Contains(fields, name) {
					t.Errorf("unknown field %q", name)
				}
			}
			for _, name := range fields {
				if _, ok := v[name]; !ok {
					t.Errorf("missing field %q", name)
				}
			}
			got := computeVector(t, v)
			for _, name := range vectorOutputs[format[0]] {
				if got[name] != v[name] {
					t.Errorf("%s:\n doc  %s\n code %s", name, v[name], got[name])
				}
			}
			checkOpens(t, v)
		})
	}
	for _, f := range []byte{FormatCiphertext, FormatWrappedKey, FormatSealedKey} {
		if seen[f] == 0 {
			t.Errorf("%s has no vector for format 0x%02x", docPath, f)
		}
	}
	if len(notes) == 0 {
		t.Errorf("%s has no annotated breakdown", docPath)
	}
	for _, n := range notes {
		v, ok := byName[n.vector]
		if !ok {
			t.Errorf("%s:%d: annotation of unknown vector %q", docPath, n.line, n.vector)
			continue
		}
		if v[n.field] == "" || n.hex != v[n.field] {
			t.Errorf("%s:%d: annotated %s of %s does not match the vector:\n annotated %s\n vector    %s", docPath, n.line, n.field, n.vector, n.hex, v[n.field])
		}
	}
}

// checkOpens parses the documented envelope and recovers the documented
// plaintext or data key from it, as a client of the format would.
func checkOpens(t *testing.T, v docVector) {
	t.Helper()
	env, err := Parse(mustHex(t, v["envelope"]))
	if err != nil {
		t.Fatalf("Parse(documented envelope): %v", err)
	}
	var ctx map[string]string
	if err := json.Unmarshal([]byte(v["context"]), &ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(env.KeyID, mustHex(t, v["key_id"])) || fmt.Sprint(env.Version) != v["version"] || !bytes.Equal(env.IV, mustHex(t, v["iv"])) {
		t.Fatalf("parsed header = (%x, %d, %x), want (%s, %s, %s)", env.KeyID, env.Version, env.IV, v["key_id"], v["version"], v["iv"])
	}
	master := mustHex(t, v["master_key"])
	block, _ := aes.NewCipher(master)
	gcm, _ := cipher.NewGCM(block)
	aad, err := env.AAD(ctx)
	if err != nil {
		t.Fatal(err)
	}
	switch env.Format {
	case FormatCiphertext:
		pt, err := gcm.Open(nil, env.IV, env.Sealed(), aad)
		if err != nil {
			t.Fatalf("documented ciphertext does not decrypt: %v", err)
		}
		if hex.EncodeToString(pt) != v["plaintext"] {
			t.Fatalf("decrypted %x, want %s", pt, v["plaintext"])
		}
	case FormatWrappedKey:
		if _, err := gcm.Open(nil, env.IV, env.Tag, aad); err != nil {
			t.Fatalf("documented binding tag does not verify: %v", err)
		}
		dk, err := kwpUnwrap(master, env.Body)
		if err != nil {
			t.Fatalf("documented wrapped key does not unwrap: %v", err)
		}
		if hex.EncodeToString(dk) != v["data_key"] {
			t.Fatalf("unwrapped %x, want %s", dk, v["data_key"])
		}
	case FormatSealedKey:
		dk, err := gcm.Open(nil, env.IV, env.Sealed(), aad)
		if err != nil {
			t.Fatalf("documented sealed key does not open: %v", err)
		}
		if hex.EncodeToString(dk) != v["data_key"] {
			t.Fatalf("opened %x, want %s", dk, v["data_key"])
		}
	}
}
