package digitalocean

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/drivertest"
)

func resourceLines(rs []drivers.Resource) []string {
	var out []string
	for _, r := range rs {
		id := ""
		if r.ID != "" {
			id = " id"
		}
		out = append(out, fmt.Sprintf("%s %s %s%s", r.Action, r.Kind, r.Name, id))
	}
	sort.Strings(out)
	return out
}

// TestResources: what plan lists before, during and after a cluster's life.
func TestResources(t *testing.T) {
	s := startServer(t)
	d := driverFor(t, s, block, nil)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	_, adminLine := drivertest.AdminKey(t)
	full := []drivers.MachineSpec{spec(t, cluster, "manager", 1, adminLine), spec(t, cluster, "worker", 1, adminLine)}
	full[1].DiskGiB = 100
	// What plan.Wanted hands over: no keys.
	wanted := make([]drivers.MachineSpec, len(full))
	for i, m := range full {
		m.SSH.PublicKey, m.HostKey = "", drivers.HostKey{}
		wanted[i] = m
	}
	vol := volumeName(cluster, full[1].Name, 1)
	base := "provision-" + cluster

	rs, err := d.Resources(ctx, cluster, wanted)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"create firewall " + base, "create ssh-key " + base, "create volume " + vol, "create vpc " + base}
	if got := resourceLines(rs); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("before:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, r := range rs {
		if r.Kind == "volume" && !strings.Contains(r.Note, "100 GiB") {
			t.Errorf("volume note %q", r.Note)
		}
		if r.Kind == "firewall" && !strings.Contains(r.Note, "198.51.100.7/32") {
			t.Errorf("firewall note %q", r.Note)
		}
	}
	if s.Calls("POST", "") != 0 {
		t.Error("Resources made something")
	}

	var ms []drivers.Machine
	for _, m := range full {
		got, err := d.Create(ctx, cluster, m)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, got)
	}
	rs, err = d.Resources(ctx, cluster, wanted)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{"keep firewall " + base + " id", "keep ssh-key " + base + " id", "keep volume " + vol + " id", "keep vpc " + base + " id"}
	if got := resourceLines(rs); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("while it runs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	rs, _ = d.Resources(ctx, cluster, nil)
	for _, r := range rs {
		if r.Action != drivers.ResourceRemove {
			t.Errorf("for destroy: %+v", r)
		}
	}
	if len(rs) != 4 {
		t.Errorf("for destroy: %d resources", len(rs))
	}

	for _, m := range ms {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if rs, err := d.Resources(ctx, cluster, nil); err != nil || len(rs) != 0 {
		t.Errorf("after teardown: %v %+v", err, rs)
	}

	// Without a token: what it would make, and what it could not check.
	nd := newDriver(d.cfg, drivers.Options{})
	fast(nd)
	nd.cfg.Token = nil
	nd.cfg.CustomAPI = false
	nd.cfg.APIURL = mustURL(DefaultAPIURL)
	rs, err = nd.Resources(ctx, cluster, wanted)
	if err == nil || !strings.Contains(err.Error(), "no DigitalOcean token") || !strings.Contains(err.Error(), "which pools need a volume") {
		t.Errorf("no token: %v", err)
	}
	if got := resourceLines(rs); len(got) != 3 || got[0] != "create firewall "+base {
		t.Errorf("no token: %v", got)
	}
}
