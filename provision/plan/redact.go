package plan

import (
	"strings"

	"github.com/provision/provision/provision/redact"
)

// Redacted returns a copy of the plan to print (text or JSON) without
// sensitive values: every known secret value wherever it appears, and the
// old and new values of settings whose spec path
// (spec.Cluster.SensitivePaths, "logging.options") uses a sensitive
// variable, even where the value is only derived from it. The plan itself
// is left as it is for apply.
func (p *Plan) Redacted(v *redact.Values, sensitivePaths map[string]bool) *Plan {
	cp := *p
	cp.Actions = make([]Action, len(p.Actions))
	for i, a := range p.Actions {
		a.Reasons = append([]string(nil), a.Reasons...)
		cp.Actions[i] = a
	}
	cp.Settings = make([]SettingChange, len(p.Settings))
	for i, s := range p.Settings {
		s.Changes = append([]string(nil), s.Changes...)
		cp.Settings[i] = s
	}
	if p.Settings == nil {
		cp.Settings = nil
	}
	cp.Notes = append([]string(nil), p.Notes...)
	if p.Unknown != nil {
		cp.Unknown = make(map[string]string, len(p.Unknown))
		for k, v := range p.Unknown {
			cp.Unknown[k] = v
		}
	}
	cp.Resources = append([]Resource(nil), p.Resources...)
	cp.redact(v, sensitivePaths)
	return &cp
}

func (p *Plan) redact(v *redact.Values, sensitivePaths map[string]bool) {
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
