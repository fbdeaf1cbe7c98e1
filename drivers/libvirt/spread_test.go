//go:build cgo && libvirt_dlopen

package libvirt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/drivertest"
)

// testHypervisor writes a libvirt test-driver node file (a hypervisor of
// its own: each connection to test:///<file> is a private instance) with
// the storage pool and an active network "lab", and returns its URI.
func testHypervisor(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	x := fmt.Sprintf(`<node>
  <network><name>lab</name><bridge name="virbr-%[1]s"/><forward/>
    <ip address="192.168.%[2]d.1" netmask="255.255.255.0"><dhcp><range start="192.168.%[2]d.2" end="192.168.%[2]d.254"/></dhcp></ip>
  </network>
  <pool type="dir"><name>%[3]s</name><uuid>%[4]s</uuid><target><path>%[5]s</path></target></pool>
</node>`, name, 100+len(name), testPool, "35bb2ad9-388a-cdfe-461a-b8907f6e5"+fmt.Sprintf("%03d", len(name)), dir)
	p := filepath.Join(dir, "node.xml")
	if err := os.WriteFile(p, []byte(x), 0o644); err != nil {
		t.Fatal(err)
	}
	return "test://" + p
}

// TestSpreadOverHypervisors: with uris, machine N of a role goes to
// hypervisor (N-1) mod len, so three managers land on two hypervisors as
// 1, 2, 1; Placement says so before anything exists; Machines finds each
// where it is and names its zone; Destroy removes it there; a hypervisor
// that does not answer fails the listing (its machines must not look gone)
// but not the destroy of a machine elsewhere.
func TestSpreadOverHypervisors(t *testing.T) {
	if _, err := os.Stat("/usr/bin/" + isoTool); err != nil {
		requireLibvirt(t, isoTool+" not installed")
	}
	uA, uB := testHypervisor(t, "a"), testHypervisor(t, "bb")
	cfg := Config{URI: uA, URIs: []string{uA, uB}, DomainType: "qemu", Pool: testPool, ImagePool: testPool, Image: "base.qcow2",
		MachineType: DefaultMachineType, Mode: ModeNetwork, Network: "lab", BootTimeout: 5 * time.Second, ShutdownTimeout: 2 * time.Second}
	d := NewDriver(cfg, drivers.Options{Name: "lab", Log: testLog(t)})
	t.Cleanup(func() { d.Close() })
	f := &fakeIO{seeds: map[string][]byte{}, keys: map[string]string{}, scans: map[string]int{}, wrong: map[string]string{}}
	d.upload, d.pollMin = f.upload, 10*time.Millisecond
	for _, h := range d.hvs {
		conn, err := h.connect()
		if err != nil {
			requireLibvirt(t, err.Error())
		}
		pool, err := conn.LookupStoragePoolByName(testPool)
		if err != nil {
			t.Fatalf("%s: %v", h.uri, err)
		}
		v, err := pool.StorageVolCreateXML(`<volume><name>base.qcow2</name><capacity unit="GiB">2</capacity><target><format type="qcow2"/></target></volume>`, 0)
		if err != nil {
			t.Fatal(err)
		}
		v.Free()
		pool.Free()
	}
	cluster := drivertest.ClusterID(t)
	_, admin := drivertest.AdminKey(t)
	var ms []drivers.MachineSpec
	for _, n := range []string{"spread-manager-1", "spread-manager-2", "spread-manager-3", "spread-worker-1", "spread-worker-2"} {
		role := "manager"
		if strings.Contains(n, "worker") {
			role = "worker"
		}
		s := drivertest.Spec(t, cluster, n, role, admin)
		s.Size, s.DiskGiB = "1cpu-512m", 4
		ms = append(ms, s)
	}
	want := map[string]string{"spread-manager-1": uA, "spread-manager-2": uB, "spread-manager-3": uA, "spread-worker-1": uA, "spread-worker-2": uB}
	// The scan answers at each domain's lease address with its pinned key,
	// whichever hypervisor it is on (the second generation of a machine
	// has the first's key here).
	d.scan = func(ctx context.Context, addr string, port int) (string, error) {
		for _, h := range d.hvs {
			conn, _ := h.connect()
			for _, s := range ms {
				for _, name := range []string{DomainName(cluster, s.Name), DomainName(cluster, s.Name+"-g2")} {
					dom, err := conn.LookupDomainByName(name)
					if err != nil {
						continue
					}
					x, err := domainDesc(dom)
					a := ""
					if err == nil {
						a = d.address(dom, ModeNetwork, x)
					}
					dom.Free()
					if a == addr && port == 22 {
						return s.HostKey.Public, nil
					}
				}
			}
		}
		return f.scan(ctx, addr, port)
	}
	ctx := context.Background()

	p, err := d.Placement(ctx, cluster, ms)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Zones) != 2 || p.Zones[0] != ZoneOf(uA) || p.Zones[1] != ZoneOf(uB) {
		t.Errorf("zones %v", p.Zones)
	}
	for n, u := range want {
		if p.Machines[n] != ZoneOf(u) {
			t.Errorf("placement of %s: %q, want %q", n, p.Machines[n], ZoneOf(u))
		}
	}
	if err := d.Preflight(ctx, ms); err != nil {
		t.Fatalf("preflight: %v", err)
	}

	drivertest.Run(t, d, drivertest.Config{Cluster: cluster, Machines: ms[:2], SkipSSH: true, Timeout: time.Minute})

	// Now all five, and each domain only on its own hypervisor.
	for _, s := range ms {
		m, err := d.Create(ctx, cluster, s)
		if err != nil {
			t.Fatal(err)
		}
		if m.Zone != ZoneOf(want[s.Name]) {
			t.Errorf("%s created in zone %q, want %q", s.Name, m.Zone, ZoneOf(want[s.Name]))
		}
	}
	for _, h := range d.hvs {
		conn, _ := h.connect()
		for _, s := range ms {
			dom, err := conn.LookupDomainByName(DomainName(cluster, s.Name))
			if on := err == nil; on != (want[s.Name] == h.uri) {
				t.Errorf("%s on %s: %v, want it only on %s", s.Name, h.uri, on, want[s.Name])
			}
			if err == nil {
				dom.Free()
			}
		}
	}
	have, err := d.Machines(ctx, cluster)
	if err != nil || len(have) != len(ms) {
		t.Fatalf("Machines: %d, %v", len(have), err)
	}
	for _, m := range have {
		if m.Zone != ZoneOf(want[m.Name]) {
			t.Errorf("Machines: %s in zone %q, want %q", m.Name, m.Zone, ZoneOf(want[m.Name]))
		}
	}
	if p, err = d.Placement(ctx, cluster, ms); err != nil || p.Machines["spread-manager-2"] != ZoneOf(uB) {
		t.Errorf("placement of existing machines: %v %v", p.Machines, err)
	}
	rs, err := d.Resources(ctx, cluster, ms)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Name == DiskName(cluster, "spread-manager-2") && (r.Action != drivers.ResourceKeep || !strings.HasSuffix(r.Note, "on "+ZoneOf(uB))) {
			t.Errorf("resource %+v", r)
		}
	}

	// A machine's second generation goes to the hypervisor of its first,
	// and is destroyed there by its tags alone, the first staying.
	g2 := ms[1]
	g2.Generation = 2
	m2, err := d.Create(ctx, cluster, g2)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Zone != ZoneOf(uB) || drivers.GenerationOf(m2.Tags) != 2 {
		t.Errorf("spread-manager-2's generation 2 in zone %q (tags %v), want %q", m2.Zone, m2.Tags, ZoneOf(uB))
	}
	if all, err := d.Machines(ctx, cluster); err != nil || len(all) != len(ms)+1 {
		t.Errorf("Machines with a second generation: %d, %v", len(all), err)
	}
	if p, err = d.Placement(ctx, cluster, ms); err != nil || p.Machines["spread-manager-2"] != ZoneOf(uB) {
		t.Errorf("placement with a second generation: %v %v", p.Machines, err)
	}
	if err := d.Destroy(ctx, drivers.Machine{Name: g2.Name, Tags: map[string]string{drivers.TagCluster: cluster, drivers.TagGeneration: "2"}}); err != nil {
		t.Fatal(err)
	}
	if all, err := d.Machines(ctx, cluster); err != nil || len(all) != len(ms) {
		t.Errorf("Machines after destroying the second generation: %d, %v", len(all), err)
	}

	// Hypervisor B stops answering: the listing fails rather than leave
	// its machines out; a machine on A is still destroyed.
	good := d.hvs[1]
	d.hvs[1] = &hypervisor{uri: "test:///nonexistent/node.xml", zone: good.zone}
	if _, err := d.Machines(ctx, cluster); err == nil || !strings.Contains(err.Error(), "nonexistent") {
		t.Errorf("Machines with a hypervisor down: %v", err)
	}
	var m1 drivers.Machine
	for _, m := range have {
		if m.Name == "spread-manager-1" {
			m1 = m
		}
	}
	if err := d.Destroy(ctx, m1); err != nil {
		t.Errorf("destroy of a machine on A while B is down: %v", err)
	}
	d.hvs[1] = good

	for _, m := range have {
		if err := d.Destroy(ctx, m); err != nil {
			t.Errorf("destroy %s: %v", m.Name, err)
		}
	}
	if left, err := d.Machines(ctx, cluster); err != nil || len(left) != 0 {
		t.Errorf("after destroy: %v %v", left, err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Errorf("teardown: %v", err)
	}
	for _, h := range d.hvs {
		conn, _ := h.connect()
		if vols, err := d.strayVolumes(conn, cluster); err != nil || len(vols) > 0 {
			t.Errorf("volumes left on %s: %v %v", h.uri, vols, err)
		}
	}
}
