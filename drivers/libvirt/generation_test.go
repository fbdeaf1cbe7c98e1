//go:build cgo && libvirt_dlopen

package libvirt

import (
	"bytes"
	"context"
	"maps"
	"strings"
	"testing"

	lv "libvirt.org/go/libvirt"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/drivertest"
)

// TestGenerationsCoexist: a replaced machine's next generation is a second
// domain with its own disk and seed (named <machine>-g2) next to the first,
// whose names stay those of a machine made before generations existed. The
// guest's host name is the machine name in both; Create of a generation
// again returns its domain on the same forwarded ports; Machines lists
// both under the machine's name; Destroy by tags alone removes exactly the
// generation they name.
func TestGenerationsCoexist(t *testing.T) {
	d, f := newTestDriver(t, Config{Mode: ModeUser})
	cluster := drivertest.ClusterID(t)
	ctx := context.Background()
	g1 := specs(t, cluster, 1)[0]
	// apply passes the generation tag to drivers that Coexist, the first
	// generation's too.
	g1.Generation = 1
	g1.Tags[drivers.TagGeneration] = "1"
	g2 := g1
	g2.Generation = 2
	g2.Tags = maps.Clone(g1.Tags)
	g2.Tags[drivers.TagGeneration] = "2"
	g2.HostKey, _ = drivertest.HostKey(t)

	dom1, dom2 := DomainName(cluster, "vm-1"), DomainName(cluster, "vm-1-g2")
	d.scan = pinAllScanner{d: d, specs: map[string]drivers.MachineSpec{dom1: g1, dom2: g2}}.scan

	m1, err := d.Create(ctx, cluster, g1)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := d.Create(ctx, cluster, g2)
	if err != nil {
		t.Fatal(err)
	}
	if m1.ID == m2.ID || m2.Name != "vm-1" || drivers.GenerationOf(m2.Tags) != 2 || m2.Tags[drivers.TagMachine] != "vm-1" {
		t.Fatalf("generation 2 %+v, generation 1 %+v", m2, m1)
	}
	if _, ok := m1.Tags[drivers.TagGeneration]; ok || drivers.GenerationOf(m1.Tags) != 1 {
		t.Errorf("generation 1's tags %v: want no generation tag, as before generations", m1.Tags)
	}
	if !drivertest.SameKey(m2.SSH.HostKey, g2.HostKey.Public) || !drivertest.SameKey(m1.SSH.HostKey, g1.HostKey.Public) {
		t.Errorf("host keys: generation 1 %q, generation 2 %q", m1.SSH.HostKey, m2.SSH.HostKey)
	}
	ports := map[int]bool{m1.SSH.Port: true, m1.EnginePort: true, m2.SSH.Port: true, m2.EnginePort: true}
	if len(ports) != 4 || ports[0] {
		t.Errorf("forwarded ports: generation 1 %d/%d, generation 2 %d/%d: want four distinct", m1.SSH.Port, m1.EnginePort, m2.SSH.Port, m2.EnginePort)
	}

	// What generation 2 is made of.
	conn, _ := d.connect()
	dom, err := conn.LookupDomainByName(dom2)
	if err != nil {
		t.Fatalf("generation 2's domain %s: %v", dom2, err)
	}
	uuid, _ := dom.GetUUIDString()
	mt, ok, err := readMeta(dom)
	x, xerr := domainDesc(dom)
	dom.Free()
	if err != nil || !ok || xerr != nil {
		t.Fatalf("domain %s: metadata %v %v, XML %v", dom2, ok, err, xerr)
	}
	if uuid != m2.ID || mt.tags()[drivers.TagMachine] != "vm-1" || mt.tags()[drivers.TagGeneration] != "2" {
		t.Errorf("domain %s (%s) metadata %v, machine %s", dom2, uuid, mt.tags(), m2.ID)
	}
	var vols []string
	for _, disk := range x.Devices.Disks {
		if disk.Source != nil && disk.Source.Volume != nil {
			vols = append(vols, disk.Source.Volume.Volume)
		}
	}
	if strings.Join(vols, " ") != DiskName(cluster, "vm-1-g2")+" "+SeedName(cluster, "vm-1-g2") {
		t.Errorf("generation 2's disks: %v", vols)
	}
	dom, err = conn.LookupDomainByName(dom1)
	if err != nil {
		t.Fatalf("generation 1's domain %s: %v", dom1, err)
	}
	mt1, _, _ := readMeta(dom)
	dom.Free()
	if _, ok := mt1.tags()[drivers.TagGeneration]; ok {
		t.Errorf("generation 1's metadata records a generation: %v", mt1.tags())
	}
	seed := f.seeds[SeedName(cluster, "vm-1-g2")]
	for _, want := range []string{"local-hostname: vm-1\n", `hostname: "vm-1"`, "instance-id: " + dom2 + "-"} {
		if !bytes.Contains(seed, []byte(want)) {
			t.Errorf("generation 2's seed lacks %q", want)
		}
	}
	if len(f.seeds) != 2 {
		t.Errorf("seeds uploaded: %d, want 2", len(f.seeds))
	}

	// Generation 2 again, stopped meanwhile: the same domain on the same
	// ports, nothing made anew.
	if dom, err = conn.LookupDomainByUUIDString(m2.ID); err != nil {
		t.Fatal(err)
	}
	if err := dom.Destroy(); err != nil {
		t.Fatal(err)
	}
	dom.Free()
	again, err := d.Create(ctx, cluster, g2)
	if err != nil || again.ID != m2.ID || again.SSH.Port != m2.SSH.Port || again.EnginePort != m2.EnginePort || again.State != "running" {
		t.Fatalf("Create of generation 2 again: %v %+v, first %+v", err, again, m2)
	}
	if len(f.seeds) != 2 {
		t.Errorf("seeds uploaded after Create again: %d, want 2", len(f.seeds))
	}

	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 2 {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	if ms[0].ID != m1.ID || ms[1].ID != m2.ID || ms[0].Name != "vm-1" || ms[1].Name != "vm-1" || ms[1].Tags[drivers.TagGeneration] != "2" || drivers.GenerationOf(ms[0].Tags) != 1 {
		t.Errorf("Machines: %+v", ms)
	}
	// The spec asks for the machine (plan does not know generations):
	// both generations' volumes are kept.
	rs, err := d.Resources(ctx, cluster, []drivers.MachineSpec{{Name: "vm-1"}})
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for _, r := range rs {
		if r.Kind == "volume" && r.Action == drivers.ResourceKeep {
			kept++
		} else {
			t.Errorf("resource %+v", r)
		}
	}
	if kept != 4 {
		t.Errorf("volumes kept: %d, want 4 (%+v)", kept, rs)
	}

	// Destroy generation 1 by tags alone: generation 2 stays whole.
	if err := d.Destroy(ctx, drivers.Machine{Name: "vm-1", Tags: map[string]string{drivers.TagCluster: cluster, drivers.TagGeneration: "1"}}); err != nil {
		t.Fatal(err)
	}
	// A generation that does not exist is gone already.
	if err := d.Destroy(ctx, drivers.Machine{Name: "vm-1", Tags: map[string]string{drivers.TagCluster: cluster, drivers.TagGeneration: "3"}}); err != nil {
		t.Fatal(err)
	}
	ms, err = d.Machines(ctx, cluster)
	if err != nil || len(ms) != 1 || ms[0].ID != m2.ID {
		t.Fatalf("after destroying generation 1: %v %+v (generation 2 is %s)", err, ms, m2.ID)
	}
	if _, err := conn.LookupDomainByName(dom1); !isCode(err, lv.ERR_NO_DOMAIN) {
		t.Errorf("generation 1's domain after Destroy: %v", err)
	}
	pool, err := conn.LookupStoragePoolByName(testPool)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Free()
	for _, name := range []string{DiskName(cluster, "vm-1"), SeedName(cluster, "vm-1")} {
		if _, err := pool.LookupStorageVolByName(name); !isCode(err, lv.ERR_NO_STORAGE_VOL) {
			t.Errorf("generation 1's volume %s after Destroy: %v", name, err)
		}
	}
	for _, name := range []string{DiskName(cluster, "vm-1-g2"), SeedName(cluster, "vm-1-g2")} {
		v, err := pool.LookupStorageVolByName(name)
		if err != nil {
			t.Errorf("generation 2's volume %s after destroying generation 1: %v", name, err)
			continue
		}
		v.Free()
	}

	// Only generation 2 left: its volumes are kept, and the first
	// generation's are not listed to create.
	rs, err = d.Resources(ctx, cluster, []drivers.MachineSpec{{Name: "vm-1"}})
	if err != nil || len(rs) != 2 || rs[0].Action != drivers.ResourceKeep || rs[1].Action != drivers.ResourceKeep || !strings.Contains(rs[0].Name, "vm-1-g2") {
		t.Errorf("Resources with generation 2 alone: %+v %v", rs, err)
	}

	if err := d.Destroy(ctx, ms[0]); err != nil {
		t.Fatal(err)
	}
	if ms, err := d.Machines(ctx, cluster); err != nil || len(ms) != 0 {
		t.Errorf("after destroying generation 2: %v %+v", err, ms)
	}
	if vols, err := d.strayVolumes(conn, cluster); err != nil || len(vols) != 0 {
		t.Errorf("volumes left: %v %v", vols, err)
	}
	checkTestDomain(t, d)
}

// TestGenerationNotAdopted: a domain under generation 2's name whose
// metadata says it is the first generation (or another machine) is not
// adopted as generation 2, nor removed as it.
func TestGenerationNotAdopted(t *testing.T) {
	d, _ := newTestDriver(t, Config{Mode: ModeUser})
	cluster := drivertest.ClusterID(t)
	ctx := context.Background()
	g1 := specs(t, cluster, 1)[0]
	g1.Name, g1.Tags[drivers.TagMachine] = "vm-7", "vm-7"
	ms, err := newMeta(cluster, g1, ModeUser, 0, 0).marshal()
	if err != nil {
		t.Fatal(err)
	}
	name := DomainName(cluster, drivers.InstanceName("vm-7", 2))
	conn, _ := d.connect()
	dom, err := conn.DomainDefineXML(`<domain type="test"><name>` + name + `</name><memory unit="MiB">128</memory><os><type>hvm</type></os><metadata>` + ms + `</metadata></domain>`)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		dom.Undefine()
		dom.Free()
	}()
	g2 := g1
	g2.Generation = 2
	if _, err := d.Create(ctx, cluster, g2); err == nil || !strings.Contains(err.Error(), "not this cluster's machine vm-7 (generation 2)") {
		t.Errorf("Create of generation 2 over a generation 1 domain: %v", err)
	}
	err = d.Destroy(ctx, drivers.Machine{Name: "vm-7", Tags: map[string]string{drivers.TagCluster: cluster, drivers.TagGeneration: "2"}})
	if err == nil || !strings.Contains(err.Error(), "not removing it") {
		t.Errorf("Destroy of generation 2 by tags: %v", err)
	}
	if _, err := conn.LookupDomainByName(name); err != nil {
		t.Errorf("the domain was removed: %v", err)
	}
	if got, err := d.Machines(ctx, cluster); err != nil || len(got) != 1 || drivers.GenerationOf(got[0].Tags) != 1 {
		t.Errorf("Machines: %v %+v", err, got)
	}
}
