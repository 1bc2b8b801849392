package config

import (
	"errors"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

var configType = reflect.TypeFor[Config]()

// maxDepth bounds the walk through aliases; the real schema is 3 levels deep.
const maxDepth = 16

// nodeWalker checks a parsed YAML tree against the Config schema before it
// is decoded, so that every unknown field is reported with its full path
// (yaml's KnownFields stops at the first and names only the Go type). It
// also records which field path each line holds, so that yaml's type
// errors, which carry only a line number, can be given a path.
type nodeWalker struct {
	problems []Problem
	lines    map[int]string
}

func (w *nodeWalker) walk(n *yaml.Node, t reflect.Type, path string) {
	w.walkDepth(n, t, path, 0)
}

func (w *nodeWalker) walkDepth(n *yaml.Node, t reflect.Type, path string, depth int) {
	if n == nil || depth > maxDepth {
		return
	}
	if n.Kind == yaml.AliasNode {
		// Not followed: aliases can nest into exponential trees. The
		// strict decoder still checks the aliased content's fields.
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	// Only scalars: a mapping or sequence node starts on the line of its
	// first child, and noting it there would blur that child's path.
	if path != "" && n.Kind == yaml.ScalarNode {
		w.noteLine(n.Line, path)
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" { // merge key: its mapping is part of this one
				w.walkDepth(v, t, path, depth+1)
				continue
			}
			child := joinPath(path, k.Value)
			f, ok := fieldByTag(t, k.Value)
			if !ok {
				w.problems = append(w.problems, Problem{
					Path:    child,
					Message: "unknown field (line " + strconv.Itoa(k.Line) + ")" + suggest(t, k.Value),
				})
				continue
			}
			w.noteLine(k.Line, child)
			w.walkDepth(v, f.Type, child, depth+1)
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, e := range n.Content {
			w.walkDepth(e, t.Elem(), path+"["+strconv.Itoa(i)+"]", depth+1)
		}
	}
}

// noteLine records that line holds path. When a line holds several paths
// (flow style, "{name: a, role: relay}"), it keeps their common prefix.
func (w *nodeWalker) noteLine(line int, path string) {
	old, ok := w.lines[line]
	if !ok {
		w.lines[line] = path
		return
	}
	w.lines[line] = commonPathPrefix(old, path)
}

func commonPathPrefix(a, b string) string {
	for !(strings.HasPrefix(b, a) && (len(b) == len(a) || b[len(a)] == '.' || b[len(a)] == '[')) {
		i := strings.LastIndexAny(a, ".[")
		if i <= 0 {
			return ""
		}
		a = a[:i]
	}
	return a
}

func joinPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// suggest names a known field that differs from name only in case, dashes
// or underscores: the usual typo ("pin-file", "pinFile" for "pin_file").
func suggest(t reflect.Type, name string) string {
	norm := func(s string) string {
		return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s))
	}
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if norm(tag) == norm(name) {
			return "; did you mean " + strconv.Quote(tag) + "?"
		}
	}
	return ""
}

var (
	lineRE     = regexp.MustCompile(`^line (\d+): (.*)$`)
	backtickRE = regexp.MustCompile("`.*`")
	unmarshRE  = regexp.MustCompile(`^cannot unmarshal !!(\w+) value into (.+)$`)
)

// sanitizeYAMLError rewrites a yaml error so that it names field paths
// (looked up by line in lines) and never quotes a value: yaml quotes the
// offending value, which could be a secret pasted into the wrong field.
func sanitizeYAMLError(err error, lines map[int]string) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return backtickRE.ReplaceAllString(err.Error(), "value")
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		e = backtickRE.ReplaceAllString(e, "value")
		m := lineRE.FindStringSubmatch(e)
		if m == nil {
			msgs = append(msgs, e)
			continue
		}
		line, _ := strconv.Atoi(m[1])
		msg := m[2]
		if u := unmarshRE.FindStringSubmatch(msg); u != nil {
			msg = "wrong type: got " + u[1] + ", want " + friendlyType(u[2])
		}
		if p := lines[line]; p != "" {
			msgs = append(msgs, p+": "+msg+" (line "+m[1]+")")
		} else {
			msgs = append(msgs, "line "+m[1]+": "+msg)
		}
	}
	return strings.Join(msgs, "; ")
}

func friendlyType(goType string) string {
	switch goType {
	case "time.Duration":
		return `duration such as "60s" or "168h"`
	case "config.Role", "config.Operation":
		return "string"
	}
	if strings.HasPrefix(goType, "[]") {
		return "list"
	}
	if strings.HasPrefix(goType, "config.") {
		return "mapping"
	}
	return goType
}
