// Package templates holds the host configuration files provision writes, as
// text/template sources embedded in the binary. hostos renders them from
// typed structs; a missing key is an error, never an empty string.
package templates

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"strings"
	"text/template"
)

// FS is the embedded template sources (files/*.tmpl).
//
//go:embed files/*.tmpl
var FS embed.FS

var parsed = template.Must(template.New("").Option("missingkey=error").Funcs(Funcs).ParseFS(FS, "files/*.tmpl"))

// Funcs are the helpers every template may use.
var Funcs = template.FuncMap{
	// json renders v as compact JSON (strings quoted and escaped).
	"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
	// jsonIndent renders v as JSON indented by two spaces, each line after
	// the first prefixed by prefix.
	"jsonIndent": func(prefix string, v any) (string, error) {
		b, err := json.MarshalIndent(v, prefix, "  ")
		return string(b), err
	},
	"join": strings.Join,
	// indent prefixes every line of s with n spaces (a YAML block scalar).
	"indent": func(n int, s string) string {
		pad := strings.Repeat(" ", n)
		lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
		for i, l := range lines {
			lines[i] = pad + l
		}
		return strings.Join(lines, "\n")
	},
}

// Names lists the templates, e.g. "daemon.json.tmpl".
func Names() []string {
	var out []string
	for _, t := range parsed.Templates() {
		if t.Name() != "" {
			out = append(out, t.Name())
		}
	}
	return out
}

// Render executes the named template (its file name, "daemon.json.tmpl")
// with data.
func Render(name string, data any) ([]byte, error) {
	t := parsed.Lookup(name)
	if t == nil {
		return nil, fmt.Errorf("render %s: no such template", name)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("render %s: %w", name, err)
	}
	return buf.Bytes(), nil
}
