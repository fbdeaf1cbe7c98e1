// Package redact keeps secrets out of logs, errors and state.
package redact

import (
	"encoding/json"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"strings"
)

// Secret is bytes that must never be printed: fmt, slog and encoding/json all
// see "REDACTED".
type Secret []byte

func (Secret) String() string               { return "REDACTED" }
func (Secret) GoString() string             { return "REDACTED" }
func (Secret) LogValue() slog.Value         { return slog.StringValue("REDACTED") }
func (Secret) MarshalText() ([]byte, error) { return []byte("REDACTED"), nil }

// String replaces every occurrence of each non-empty secret in s.
func String(s string, secrets ...string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "REDACTED")
		}
	}
	return s
}

// Sensitive is what stands in for the value of a variable declared
// `sensitive = true` wherever provision would print it.
const Sensitive = "(sensitive)"

// Values replaces known secret values (those of sensitive variables) in
// text, also where they appear quoted or escaped (Go %q, JSON). It is safe
// for concurrent use; the zero value and nil replace nothing.
type Values struct {
	r *strings.Replacer
}

// NewValues returns a replacer for the given values; empty ones are ignored.
func NewValues(vals ...string) *Values {
	seen := map[string]bool{}
	var forms []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			forms = append(forms, s)
		}
	}
	for _, v := range vals {
		add(v)
		add(strings.Trim(strconv.Quote(v), `"`))
		if b, err := json.Marshal(v); err == nil {
			add(strings.Trim(string(b), `"`))
		}
	}
	if len(forms) == 0 {
		return &Values{}
	}
	// Longest first, so a secret that contains another is replaced whole.
	sort.Slice(forms, func(i, j int) bool {
		if len(forms[i]) != len(forms[j]) {
			return len(forms[i]) > len(forms[j])
		}
		return forms[i] < forms[j]
	})
	pairs := make([]string, 0, 2*len(forms))
	for _, f := range forms {
		pairs = append(pairs, f, Sensitive)
	}
	return &Values{r: strings.NewReplacer(pairs...)}
}

// Empty reports whether there is nothing to replace.
func (v *Values) Empty() bool { return v == nil || v.r == nil }

// String returns s with every secret replaced.
func (v *Values) String(s string) string {
	if v.Empty() {
		return s
	}
	return v.r.Replace(s)
}

// Writer returns a writer that replaces secrets in each Write before passing
// it on. Each Write must carry whole values (a log record, a rendered
// document), as slog's handlers and the CLI's buffered outputs do.
func (v *Values) Writer(w io.Writer) io.Writer { return &writer{v: v, w: w} }

type writer struct {
	v *Values
	w io.Writer
}

func (w *writer) Write(p []byte) (int, error) {
	if w.v.Empty() {
		return w.w.Write(p)
	}
	if _, err := io.WriteString(w.w, w.v.String(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}
