package spec

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
)

// WriteDiagnostics prints diagnostics with file:line:column, the source line
// with the offending part underlined, and the explanation. It reads the named
// files again for the source lines.
func WriteDiagnostics(w io.Writer, diags hcl.Diagnostics, color bool) error {
	files := map[string]*hcl.File{}
	for _, d := range diags {
		if r := d.Subject; r != nil && r.Filename != "" {
			if _, ok := files[r.Filename]; !ok {
				if b, err := os.ReadFile(r.Filename); err == nil {
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
		sev, code := "Error", "31"
		if d.Severity == hcl.DiagWarning {
			sev, code = "Warning", "33"
		}
		if color {
			fmt.Fprintf(bw, "\x1b[1;%sm%s:\x1b[0m \x1b[1m%s\x1b[0m\n", code, sev, d.Summary)
		} else {
			fmt.Fprintf(bw, "%s: %s\n", sev, d.Summary)
		}
		if r := d.Subject; r != nil {
			fmt.Fprintf(bw, "  --> %s:%d:%d\n", r.Filename, r.Start.Line, r.Start.Column)
			if f := files[r.Filename]; f != nil {
				writeSnippet(bw, f.Bytes, *r)
			}
		}
		if d.Detail != "" {
			for _, l := range wrap(d.Detail, 100) {
				fmt.Fprintf(bw, "  %s\n", l)
			}
		}
	}
	return bw.Flush()
}

// writeSnippet prints the subject's first line and underlines the subject.
func writeSnippet(w io.Writer, src []byte, r hcl.Range) {
	lines := bytes.Split(src, []byte("\n"))
	if r.Start.Line < 1 || r.Start.Line > len(lines) {
		return
	}
	line := strings.TrimRight(string(lines[r.Start.Line-1]), "\r")
	line = strings.ReplaceAll(line, "\t", " ")
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
