package templates

import (
	"slices"
	"strings"
	"testing"
)

func TestEveryTemplateIsListed(t *testing.T) {
	want := []string{"audit.rules.tmpl", "auto-upgrades.conf.tmpl", "cloud-init-batch.yaml.tmpl", "cloud-init.yaml.tmpl", "coredump.conf.tmpl", "daemon.json.tmpl", "docker-disk.mount.tmpl", "docker-dropin.conf.tmpl",
		"firewall.nft.tmpl", "firewall.service.tmpl", "issue.tmpl", "journald.conf.tmpl", "limits.conf.tmpl", "login-policy.sh.tmpl",
		"modprobe.conf.tmpl", "profile.sh.tmpl", "prune.service.tmpl", "prune.timer.tmpl",
		"security-source.sh.tmpl", "sshd.conf.tmpl", "sysctl.conf.tmpl", "unattended-upgrades.conf.tmpl"}
	names := Names()
	slices.Sort(names)
	got := strings.Join(names, " ")
	if got != strings.Join(want, " ") {
		t.Errorf("templates:\n got %s\nwant %s", got, strings.Join(want, " "))
	}
}

func TestMissingKeyIsAnError(t *testing.T) {
	// A map without the key: missingkey=error must refuse, not print "<no value>".
	if _, err := Render("journald.conf.tmpl", map[string]any{}); err == nil {
		t.Error("rendered with a missing key")
	}
	// A struct without the field fails too.
	if _, err := Render("journald.conf.tmpl", struct{ Other string }{}); err == nil {
		t.Error("rendered with a missing field")
	}
	out, err := Render("journald.conf.tmpl", map[string]any{"MaxUse": "1G"})
	if err != nil || !strings.Contains(string(out), "SystemMaxUse=1G\n") {
		t.Errorf("%q %v", out, err)
	}
	if _, err := Render("nope.tmpl", nil); err == nil {
		t.Error("unknown template rendered")
	}
}

func TestJSONHelpers(t *testing.T) {
	s, err := Funcs["json"].(func(any) (string, error))(map[string]string{"b": "x\"y", "a": "<"})
	if err != nil || s != `{"a":"\u003c","b":"x\"y"}` {
		t.Errorf("json: %s %v", s, err)
	}
}
