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
		a.Labels = append([]string(nil), a.Labels...)
		if p.Actions[i].Labels == nil {
			a.Labels = nil
		}
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
		a := &p.Actions[i]
		// A pool whose labels use a sensitive variable shows no label
		// value, old (from state) or new, however it was derived.
		if sensitivePaths[labelsPath(*a)] {
			for j, l := range a.Labels {
				a.Labels[j] = sensitiveLabel(l)
			}
			for j, r := range a.Reasons {
				if strings.HasPrefix(r, "labels: ") {
					a.Reasons[j] = "labels: " + strings.Join(a.Labels, ", ")
				}
			}
		}
		for j, l := range a.Labels {
			a.Labels[j] = v.String(l)
		}
		for j, r := range a.Reasons {
			a.Reasons[j] = v.String(r)
		}
		a.Address = v.String(a.Address)
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

// labelsPath is the spec path of the labels of the action's pool
// ("managers.labels", "workers.gpu.labels"), as in SensitivePaths.
func labelsPath(a Action) string {
	if a.Role == "manager" {
		return "managers.labels"
	}
	return "workers." + a.Pool + ".labels"
}

// sensitiveLabel hides the values of one label change (`k: + "v"`,
// `k: - "v"`, `k: "a" -> "b"`), keeping its key and kind.
func sensitiveLabel(l string) string {
	key, rest, ok := strings.Cut(l, ": ")
	switch {
	case !ok:
		return redact.Sensitive
	case strings.HasPrefix(rest, "+ "):
		return key + ": + " + redact.Sensitive
	case strings.HasPrefix(rest, "- "):
		return key + ": - " + redact.Sensitive
	}
	return key + ": " + redact.Sensitive + " -> " + redact.Sensitive
}
