package plan

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

var symbols = map[Kind]string{Create: "+", Adopt: "<=", Replace: "-/+", Reconfigure: "~", Remove: "-", None: " "}
var colors = map[Kind]string{Create: "32", Adopt: "36", Replace: "35", Reconfigure: "33", Remove: "31"}

// WriteText prints the plan for people: one line per machine that changes,
// setting changes, notes and a summary line.
func (p *Plan) WriteText(w io.Writer, color bool) error {
	bw := bufio.NewWriter(w)
	paint := func(k Kind, s string) string {
		if !color || colors[k] == "" {
			return s
		}
		return "\x1b[" + colors[k] + "m" + s + "\x1b[0m"
	}
	width := 0
	for _, a := range p.Actions {
		width = max(width, len(a.Machine))
	}
	fmt.Fprintf(bw, "Cluster %q: %d machines in the spec\n", p.Cluster, len(p.Actions)-p.Summary.Remove)
	if m := p.Missing; m != nil {
		fmt.Fprintln(bw)
		warn := "WARNING: " + m.Message + "."
		if color {
			warn = "\x1b[1;31m" + warn + "\x1b[0m"
		}
		fmt.Fprintln(bw, warn)
	}
	if p.Summary.Changes() > 0 {
		fmt.Fprintln(bw)
	}
	for _, a := range p.Actions {
		if a.Kind == None {
			continue
		}
		line := fmt.Sprintf("  %3s %-*s  %-7s %-10s %s", symbols[a.Kind], width, a.Machine, a.Role, a.Driver, a.Kind)
		if a.Address != "" && (a.Kind == Create || a.Kind == Replace) {
			line += " on " + a.Address
		}
		if len(a.Reasons) > 0 {
			line += ": " + strings.Join(a.Reasons, "; ")
		}
		fmt.Fprintln(bw, paint(a.Kind, line))
	}
	if len(p.Certs) > 0 {
		fmt.Fprintln(bw, "\nEngine TLS certificates:")
		for i, c := range p.Certs {
			if i == 20 && len(p.Certs) > 21 {
				fmt.Fprintf(bw, "  ... and %d more (plan --json lists them all)\n", len(p.Certs)-20)
				break
			}
			line := fmt.Sprintf("  %-*s  expires %s", width, c.Machine, c.NotAfter.UTC().Format("2006-01-02 15:04 MST"))
			if c.Renews {
				line = paint(Reconfigure, line+": renewed by this apply")
			}
			fmt.Fprintln(bw, line)
		}
	}
	if len(p.Settings) > 0 {
		fmt.Fprintln(bw, "\nSettings:")
		for _, s := range p.Settings {
			fmt.Fprintln(bw, paint(Reconfigure, "  ~ "+s.Name))
			for _, c := range s.Changes {
				fmt.Fprintf(bw, "      %s\n", c)
			}
		}
	}
	if e := p.Engine; e != nil {
		fmt.Fprintf(bw, "\nEngine upgrade (%s to %s, one batch after the other, each node drained first; the swarm's leader goes last of the managers):\n", e.Package, e.To)
		for i, b := range e.Order {
			var parts []string
			for _, m := range b {
				from := e.From[m]
				if from == "" {
					from = "?"
				}
				part := m + " (" + from + ")"
				if slices.Contains(e.Downgrade, m) {
					part += " DOWNGRADE"
				}
				parts = append(parts, part)
			}
			fmt.Fprintln(bw, paint(Reconfigure, fmt.Sprintf("  %d. %s", i+1, strings.Join(parts, ", "))))
		}
	}
	if len(p.Resources) > 0 {
		fmt.Fprintln(bw, "\nShared resources:")
		kinds := map[string]Kind{"create": Create, "keep": None, "remove": Remove}
		for _, r := range p.Resources {
			k := kinds[r.Action]
			line := fmt.Sprintf("  %3s %s %s (driver %s)", symbols[k], r.Kind, r.Name, r.Driver)
			if r.ID != "" && r.ID != r.Name {
				line += " " + r.ID
			}
			if r.Action != "keep" {
				line += ": " + r.Action
			}
			if r.Note != "" {
				line += "; " + r.Note
			}
			fmt.Fprintln(bw, paint(k, line))
		}
	}
	if zs := p.zoneLines(); len(zs) > 0 {
		fmt.Fprintln(bw, "\nZones:")
		for _, z := range zs {
			fmt.Fprintf(bw, "  %s\n", z)
		}
	}
	if len(p.Notes) > 0 {
		fmt.Fprintln(bw, "\nNotes:")
		for _, n := range p.Notes {
			fmt.Fprintf(bw, "  - %s\n", n)
		}
	}
	fmt.Fprintln(bw)
	if p.Empty() {
		fmt.Fprintln(bw, "No changes. The cluster matches the spec.")
	} else {
		s := p.Summary
		fmt.Fprintf(bw, "Plan: %d to create, %d to adopt, %d to reconfigure, %d to replace, %d to remove; %d unchanged.\n",
			s.Create, s.Adopt, s.Reconfigure, s.Replace, s.Remove, s.Unchanged)
	}
	return bw.Flush()
}

// WriteJSON prints the same plan as one JSON document.
func (p *Plan) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(p)
}
