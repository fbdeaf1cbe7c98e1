package spec

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/provision/provision/provision/redact"
)

// WriteDiagnostics prints diagnostics with file:line:column, the source line
// with the offending part underlined, and the explanation. It reads the named
// files again for the source lines (within the input size limit).
func WriteDiagnostics(w io.Writer, diags hcl.Diagnostics, color bool) error {
	files := map[string]*hcl.File{}
	for _, d := range diags {
		if r := d.Subject; r != nil && r.Filename != "" {
			if _, ok := files[r.Filename]; !ok {
				if b, err := readFileLimited(r.Filename); err == nil {
					files[r.Filename] = &hcl.File{Bytes: b}
				} else {
					files[r.Filename] = nil
				}
			}
		}
	}
	return WriteDiagnosticsWith(w, diags, files, color)
}

// WriteDiagnosticsWith prints diagnostics using sources already in memory.
func WriteDiagnosticsWith(w io.Writer, diags hcl.Diagnostics, files map[string]*hcl.File, color bool) error {
	bw := bufio.NewWriter(w)
	for i, d := range diags {
		if i > 0 {
			bw.WriteString("\n")
		}
		if i == maxDiagnostics && len(diags) > maxDiagnostics+1 {
			// A binary or badly broken file gives thousands; the first ones
			// say what is wrong.
			fmt.Fprintf(bw, "... and %d more diagnostics, not shown.\n", len(diags)-i)
			break
		}
		sev, code := "Error", "31"
		if d.Severity == hcl.DiagWarning {
			sev, code = "Warning", "33"
		}
		if color {
			fmt.Fprintf(bw, "\x1b[1;%sm%s:\x1b[0m \x1b[1m%s\x1b[0m\n", code, sev, printable(d.Summary))
		} else {
			fmt.Fprintf(bw, "%s: %s\n", sev, printable(d.Summary))
		}
		if r := d.Subject; r != nil {
			fmt.Fprintf(bw, "  --> %s:%d:%d\n", printable(r.Filename), r.Start.Line, r.Start.Column)
			if _, hidden := hcl.DiagnosticExtra[*sourceHidden](d); !hidden {
				if f := files[r.Filename]; f != nil {
					writeSnippet(bw, f.Bytes, *r, secretsOf(d))
				}
			}
		}
		if d.Detail != "" {
			for _, l := range wrap(d.Detail, 100) {
				fmt.Fprintf(bw, "  %s\n", printable(l))
			}
		}
	}
	return bw.Flush()
}

// maxDiagnostics is how many diagnostics one listing shows.
const maxDiagnostics = 50

// printable replaces control and format characters (terminal escapes,
// bidirectional overrides) with U+FFFD, one for one, so a source line or
// file name shown to the operator cannot drive their terminal and the
// underline stays under the right columns.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return utf8.RuneError
		}
		return r
	}, s)
}

// maxSnippet is the widest source line a diagnostic shows.
const maxSnippet = 160

// writeSnippet prints the subject's first line and underlines the subject.
// A line holding a sensitive value is not shown; a long line is cut around
// the subject.
func writeSnippet(w io.Writer, src []byte, r hcl.Range, secrets *redact.Values) {
	lines := bytes.Split(src, []byte("\n"))
	if r.Start.Line < 1 || r.Start.Line > len(lines) {
		return
	}
	line := strings.TrimRight(string(lines[r.Start.Line-1]), "\r")
	line = printable(strings.ReplaceAll(line, "\t", " "))
	if red := secrets.String(line); red != line {
		fmt.Fprintf(w, "%4d | %s\n", r.Start.Line, red)
		return
	}
	if n := utf8.RuneCountInString(line); n > maxSnippet {
		runes := []rune(line)
		from := max(0, min(r.Start.Column-1-maxSnippet/4, n-maxSnippet))
		line = string(runes[from : from+maxSnippet])
		r.Start.Column -= from
		if r.End.Line == r.Start.Line {
			r.End.Column -= from
		}
	}
	num := fmt.Sprintf("%4d", r.Start.Line)
	fmt.Fprintf(w, "%s | %s\n", num, line)
	startCol := r.Start.Column
	endCol := r.End.Column
	if r.End.Line != r.Start.Line {
		endCol = utf8.RuneCountInString(line) + 1
	}
	if startCol < 1 {
		startCol = 1
	}
	if endCol <= startCol {
		endCol = startCol + 1
	}
	if max := utf8.RuneCountInString(line) + 1; startCol > max {
		return
	} else if endCol > max {
		endCol = max
		if endCol <= startCol {
			endCol = startCol + 1
		}
	}
	fmt.Fprintf(w, "%s | %s%s\n", strings.Repeat(" ", len(num)), strings.Repeat(" ", startCol-1), strings.Repeat("^", endCol-startCol))
}

// sensitiveExtra rides on a diagnostic (hcl.Diagnostic.Extra) whose file may
// show a sensitive value in its source line.
type sensitiveExtra struct {
	values  *redact.Values
	wrapped any
}

func (e *sensitiveExtra) UnwrapDiagnosticExtra() any { return e.wrapped }

// sourceHidden rides on a diagnostic whose source line must not be shown.
type sourceHidden struct{ wrapped any }

func (e *sourceHidden) UnwrapDiagnosticExtra() any { return e.wrapped }

// hideSource marks diags (when hide) so they print without source lines.
func hideSource(diags hcl.Diagnostics, hide bool) hcl.Diagnostics {
	if hide {
		for _, d := range diags {
			d.Extra = &sourceHidden{wrapped: d.Extra}
		}
	}
	return diags
}

func secretsOf(d *hcl.Diagnostic) *redact.Values {
	if e, ok := hcl.DiagnosticExtra[*sensitiveExtra](d); ok {
		return e.values
	}
	return nil
}

// redactDiags replaces sensitive values in the diagnostics' text and marks
// them so their source snippets are redacted too. A diagnostic about an
// expression that uses a sensitive variable loses its explanation, which
// may quote something derived from the value (a part of it, a function of
// it) that no text replacement could find.
func redactDiags(diags hcl.Diagnostics, secrets []string, use sensitiveUse) {
	if len(secrets) == 0 && len(use.ranges) == 0 {
		return
	}
	v := redact.NewValues(secrets...)
	for _, d := range diags {
		d.Summary, d.Detail = v.String(d.Summary), v.String(d.Detail)
		if d.Subject != nil && use.covers(*d.Subject) {
			d.Detail = "This expression uses a sensitive variable, so what is wrong with its value is not shown. Check the variable's value."
		}
		d.Extra = &sensitiveExtra{values: v, wrapped: d.Extra}
	}
}

// sensitiveUse holds the ranges of attribute expressions (anywhere in the
// files, driver blocks included) that refer to a sensitive variable.
type sensitiveUse struct{ ranges []hcl.Range }

// covers reports whether r lies within one of the ranges.
func (u sensitiveUse) covers(r hcl.Range) bool {
	for _, s := range u.ranges {
		if s.Filename == r.Filename && s.Start.Byte <= r.Start.Byte && r.End.Byte <= s.End.Byte {
			return true
		}
	}
	return false
}

// findSensitiveUse walks every attribute of the (native syntax) files.
func findSensitiveUse(files []*hcl.File, decl map[string]*variable) sensitiveUse {
	var u sensitiveUse
	names := map[string]bool{}
	for n, v := range decl {
		if v.Sensitive {
			names[n] = true
		}
	}
	if len(names) == 0 {
		return u
	}
	var walk func(b *hclsyntax.Body)
	walk = func(b *hclsyntax.Body) {
		for _, a := range b.Attributes {
			for _, tr := range a.Expr.Variables() {
				if tr.RootName() != "var" || len(tr) < 2 {
					continue
				}
				if at, ok := tr[1].(hcl.TraverseAttr); ok && names[at.Name] {
					u.ranges = append(u.ranges, a.Expr.Range())
					break
				}
			}
		}
		for _, blk := range b.Blocks {
			walk(blk.Body)
		}
	}
	for _, f := range files {
		if b, ok := f.Body.(*hclsyntax.Body); ok {
			walk(b)
		}
	}
	return u
}

func wrap(s string, width int) []string {
	var out []string
	for _, para := range strings.Split(s, "\n") {
		line := ""
		for _, word := range strings.Fields(para) {
			if line != "" && len(line)+1+len(word) > width {
				out = append(out, line)
				line = ""
			}
			if line != "" {
				line += " "
			}
			line += word
		}
		out = append(out, line)
	}
	return out
}
