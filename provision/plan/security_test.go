package plan

import (
	"bytes"
	"strings"
	"testing"

	"github.com/provision/provision/provision/redact"
)

// TestHardeningKnobsInPlan: the bare-metal knobs (extra SSH users and
// groups, firewall openings) show in plan as setting changes that
// reconfigure every host, and a cluster that sets none of them keeps the
// settings hash it had before they existed (no spurious reconfigure).
func TestHardeningKnobsInPlan(t *testing.T) {
	c := cluster(t, base)
	if got := Settings(c)["hardening"]; got != `{"Profile":"default","SSH":true,"Kernel":true,"Firewall":true,"Daemon":true,"Audit":true,"Updates":true,"AutoReboot":false,"UserNamespaces":false,"OverlayEncryption":true}` {
		t.Fatalf("hardening settings without knobs changed: %s", got)
	}
	st, obs := converged(c)
	c2 := cluster(t, base+`hardening {
  ssh_users  = ["backup"]
  ssh_groups = ["ops"]
  firewall_allow {
    ports = [443]
    from  = ["203.0.113.0/24"]
  }
}
`)
	p := Build(c2, st, obs)
	if p.Summary.Reconfigure != 3 || len(p.Settings) != 1 || p.Settings[0].Name != "hardening" {
		t.Fatalf("plan: %+v %+v", p.Summary, p.Settings)
	}
	var buf bytes.Buffer
	p.WriteText(&buf, false)
	for _, want := range []string{"ssh_users: + [\"backup\"]", "ssh_groups: + [\"ops\"]", `firewall_allow: + [{"from":["203.0.113.0/24"],"ports":["443"],"protocol":"tcp"}]`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, buf.String())
		}
	}
}

// TestPlanRedacted: a plan printed with Redacted shows no secret value and
// no value of a setting that uses a sensitive variable, while the plan
// apply works from is unchanged.
func TestPlanRedacted(t *testing.T) {
	c := cluster(t, base+"logging {\n  driver = \"journald\"\n  options = { tag = \"old\" }\n}\n")
	st, obs := converged(c)
	c2 := cluster(t, base+"logging {\n  driver = \"journald\"\n  options = { tag = \"NEW-secret-9\" }\n}\n")
	p := Build(c2, st, obs)
	p.Notes = append(p.Notes, "a note with secret-9 in it")
	shown := p.Redacted(redact.NewValues("secret-9"), map[string]bool{"logging.options": true})
	var buf bytes.Buffer
	shown.WriteText(&buf, false)
	shown.WriteJSON(&buf)
	if strings.Contains(buf.String(), "secret-9") || strings.Contains(buf.String(), "old") {
		t.Errorf("redacted plan shows values:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "options.tag: (sensitive)") {
		t.Errorf("redacted plan:\n%s", buf.String())
	}
	if !strings.Contains(strings.Join(p.Settings[0].Changes, " "), "NEW-secret-9") || !strings.Contains(strings.Join(p.Notes, " "), "secret-9") {
		t.Error("Redacted changed the plan itself")
	}
}

// TestPlanRedactsSensitiveLabels: a pool whose labels use a sensitive
// variable shows neither the old value (from state) nor the new one, nor
// anything derived from them (trimspace, upper), in text or JSON.
func TestPlanRedactsSensitiveLabels(t *testing.T) {
	c := cluster(t, base)
	st, obs := converged(c)
	for _, m := range st.Machines {
		if m.Role == "worker" {
			m.Labels = map[string]string{"pw": "OldSecretValue77", "zone": "a"}
			if m.NodeID == "" {
				m.NodeID = "node-" + m.Name
			}
		}
	}
	c2 := cluster(t, strings.Replace(base, "workers { count = 2 }", "workers {\n  count  = 2\n  labels = { pw = \"NewSecretValue88\", extra = \"NEWSECRETVALUE88\" }\n}", 1))
	p := Build(c2, st, obs)
	shown := p.Redacted(redact.NewValues("NewSecretValue88\n"), map[string]bool{"workers.worker.labels": true})
	var buf bytes.Buffer
	shown.WriteText(&buf, false)
	shown.WriteJSON(&buf)
	for _, s := range []string{"OldSecretValue77", "NewSecretValue88", "NEWSECRETVALUE88"} {
		if strings.Contains(buf.String(), s) {
			t.Errorf("redacted plan shows %s:\n%s", s, buf.String())
		}
	}
	if !strings.Contains(buf.String(), "pw: (sensitive) -> (sensitive)") || !strings.Contains(buf.String(), "extra: + (sensitive)") {
		t.Errorf("label changes not shown redacted:\n%s", buf.String())
	}
}
