package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/lb"
)

// TestLBBundle: the in-cluster reconciler's bundle carries the spec, the
// variable values and, with --credentials env, only the credential variables
// of the clouds whose load balancers it drives; with none, only where (region,
// subscription), never who.
func TestLBBundle(t *testing.T) {
	noCloud(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "c.hcl")
	os.WriteFile(file, []byte(`
variable "n" {
  default = 1
}
name = "bundle"
driver "aws" {
  region        = "eu-west-1"
  allowed_cidrs = ["198.51.100.7/32"]
}
managers { count = var.n }
`), 0o600)
	varFile := filepath.Join(dir, "v.hcl")
	os.WriteFile(varFile, []byte("n = 3\n"), 0o600)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret-example")
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("DIGITALOCEAN_TOKEN", "not-for-aws")
	t.Setenv("PROVISION_VAR_n", "5")
	g := &globals{vars: []string{"n=7"}, varFiles: []string{varFile}, logLevel: "error"}
	root := newRoot()
	cmd, _, _ := root.Find([]string{"lb", "deploy"})
	if err := g.setupLog(os.Stderr); err != nil {
		t.Fatal(err)
	}
	g.stateDir = filepath.Join(dir, "state")
	l, err := g.open(cmd, file)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	l.state.ClusterID = "c0ffee"

	b, err := g.bundle(l, file, "env")
	if err != nil {
		t.Fatal(err)
	}
	if b.ClusterID != "c0ffee" || b.SpecName != "c.hcl" || !strings.Contains(string(b.Spec), `name = "bundle"`) ||
		len(b.VarArgs) != 1 || len(b.VarFiles) != 1 || string(b.VarFiles[0].Data) != "n = 3\n" {
		t.Errorf("bundle: %+v", b)
	}
	for k, want := range map[string]string{"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-example", "AWS_REGION": "eu-west-1", "PROVISION_VAR_n": "5"} {
		if b.Env[k] != want {
			t.Errorf("env %s = %q, want %q", k, b.Env[k], want)
		}
	}
	if _, ok := b.Env["DIGITALOCEAN_TOKEN"]; ok {
		t.Error("a credential of a cloud the spec does not use went into the bundle")
	}
	b, err = g.bundle(l, file, "none")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Env["AWS_SECRET_ACCESS_KEY"]; ok || b.Env["AWS_REGION"] != "eu-west-1" {
		t.Errorf("--credentials none: %v", b.Env)
	}
	// The bundle round-trips through JSON (the swarm secret).
	raw, _ := json.Marshal(b)
	var back lb.Bundle
	if err := json.Unmarshal(raw, &back); err != nil || string(back.Spec) != string(b.Spec) {
		t.Errorf("round trip: %v", err)
	}
}

func TestLBReportLines(t *testing.T) {
	r := &lbReport{
		Balancers:  []lbView{{Balancer: "aws", LBStatus: drivers.LBStatus{Exists: true, Address: "x.elb.amazonaws.com", Ports: []int{80}, Targets: 3}}},
		Published:  []int{80, 443},
		Skipped:    []lb.Skipped{{Service: "dns", Port: 53, Reason: "udp: only TCP is balanced"}},
		InCluster:  "deployed (provision/lb:abc), task running",
		Unbalanced: []string{"lab"},
	}
	got := strings.Join(r.lines(), "\n")
	for _, want := range []string{
		"load balancer aws: x.elb.amazonaws.com: ports 80 -> 3 machines",
		"the swarm publishes 80, 443: `provision apply` or `provision lb sync` brings it in step",
		"services publish ports 80, 443; driver lab has no load balancer: they are reachable on every node directly",
		"published port not balanced: dns 53 (udp: only TCP is balanced)",
		"in-cluster reconciler provision-lb: deployed",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("lines lack %q:\n%s", want, got)
		}
	}
	if (*lbReport)(nil).lines() != nil {
		t.Error("a nil report has lines")
	}
}
