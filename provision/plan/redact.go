package plan

import (
	"strings"

	"github.com/provision/provision/provision/redact"
)

// Redact removes sensitive values from the plan before it is printed
// (text or JSON): every known secret value wherever it appears, and the old
// and new values of settings whose spec path (spec.Cluster.SensitivePaths,
// "logging.options") uses a sensitive variable, even where the value is
// only derived from it.
func (p *Plan) Redact(v *redact.Values, sensitivePaths map[string]bool) {
	blocks := map[string]bool{}
	for path := range sensitivePaths {
		block, _, _ := strings.Cut(path, ".")
		blocks[block] = true
	}
	for i := range p.Actions {
		for j, r := range p.Actions[i].Reasons {
			p.Actions[i].Reasons[j] = v.String(r)
		}
		p.Actions[i].Address = v.String(p.Actions[i].Address)
	}
	for i, s := range p.Settings {
		for j, c := range s.Changes {
			if blocks[s.Name] {
				key, _, _ := strings.Cut(c, ":")
				c = key + ": " + redact.Sensitive
			}
			p.Settings[i].Changes[j] = v.String(c)
		}
	}
	for i, n := range p.Notes {
		p.Notes[i] = v.String(n)
	}
	for d, why := range p.Unknown {
		p.Unknown[d] = v.String(why)
	}
	for i := range p.Resources {
		p.Resources[i].Name = v.String(p.Resources[i].Name)
		p.Resources[i].Note = v.String(p.Resources[i].Note)
	}
}
