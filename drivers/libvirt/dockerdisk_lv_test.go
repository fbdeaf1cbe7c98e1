//go:build cgo && libvirt_dlopen

package libvirt

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/drivertest"
)

// logCount counts the driver's log lines that contain a message.
type logCount struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logCount) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logCount) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), `msg="`+msg+`"`)
}

// dockerVolume returns the XML of the pool volume, or nil when it does
// not exist.
func dockerVolume(t *testing.T, d *Driver, name string) *libvirtxml.StorageVolume {
	t.Helper()
	conn, _ := d.connect()
	pool, err := conn.LookupStoragePoolByName(testPool)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Free()
	v, err := pool.LookupStorageVolByName(name)
	if isCode(err, lv.ERR_NO_STORAGE_VOL) {
		return nil
	}
	if err != nil {
		t.Fatalf("volume %s: %v", name, err)
	}
	defer v.Free()
	s, err := v.GetXMLDesc(0)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.StorageVolume
	if err := x.Unmarshal(s); err != nil {
		t.Fatal(err)
	}
	return &x
}

// dockerSources are the volumes of the domain's disks with the docker serial.
func dockerSources(t *testing.T, d *Driver, domain string) []string {
	t.Helper()
	conn, _ := d.connect()
	dom, err := conn.LookupDomainByName(domain)
	if err != nil {
		t.Fatalf("domain %s: %v", domain, err)
	}
	defer dom.Free()
	x, err := domainDesc(dom)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, disk := range x.Devices.Disks {
		if disk.Serial == dockerSerial && disk.Source != nil && disk.Source.Volume != nil {
			out = append(out, disk.Source.Volume.Volume+"@"+disk.Target.Dev)
		}
	}
	return out
}

// TestDockerDisk: a machine whose spec asks for a docker disk gets a blank
// qcow2 volume of that size (no backing store) attached with the docker
// serial, and says where the guest sees it, from Create and from Machines
// (read from the domain, so after a crash too); one that asks for none has
// no such volume or disk. Create again returns the domain and makes no
// second volume; Destroy, by the machine or by its tags alone, removes the
// volume.
func TestDockerDisk(t *testing.T) {
	d, _ := newTestDriver(t, Config{Mode: ModeUser})
	logs := &logCount{}
	d.log = slog.New(slog.NewTextHandler(logs, nil))
	cluster := drivertest.ClusterID(t)
	ctx := context.Background()
	ss := specs(t, cluster, 2)
	with, without := ss[0], ss[1]
	with.DockerDiskGiB = 9
	d.scan = pinAllScanner{d: d, specs: map[string]drivers.MachineSpec{
		DomainName(cluster, with.Name): with, DomainName(cluster, without.Name): without}}.scan

	m, err := d.Create(ctx, cluster, with)
	if err != nil {
		t.Fatal(err)
	}
	if m.DockerDisk != "/dev/disk/by-id/virtio-provision-docker" {
		t.Errorf("Create: DockerDisk %q", m.DockerDisk)
	}
	vol := dockerVolume(t, d, DockerDiskName(cluster, with.Name))
	if vol == nil {
		t.Fatalf("no volume %s", DockerDiskName(cluster, with.Name))
	}
	if vol.Capacity == nil || vol.Capacity.Value*unitBytes(vol.Capacity.Unit) != 9<<30 {
		t.Errorf("docker disk capacity %+v, want 9 GiB", vol.Capacity)
	}
	if vol.BackingStore != nil && vol.BackingStore.Path != "" {
		t.Errorf("docker disk backed by %s: it must be blank", vol.BackingStore.Path)
	}
	if vol.Target == nil || vol.Target.Format == nil || vol.Target.Format.Type != "qcow2" {
		t.Errorf("docker disk target %+v, want qcow2", vol.Target)
	}
	if got := dockerSources(t, d, DomainName(cluster, with.Name)); strings.Join(got, " ") != DockerDiskName(cluster, with.Name)+"@vdb" {
		t.Errorf("disks with the docker serial: %v", got)
	}

	m2, err := d.Create(ctx, cluster, without)
	if err != nil {
		t.Fatal(err)
	}
	if m2.DockerDisk != "" || dockerVolume(t, d, DockerDiskName(cluster, without.Name)) != nil || len(dockerSources(t, d, DomainName(cluster, without.Name))) != 0 {
		t.Errorf("a machine that asks for no docker disk: DockerDisk %q, or it has a volume or disk", m2.DockerDisk)
	}

	// Stopped behind the driver's back, created again: the same domain,
	// the same disk, nothing made anew.
	conn, _ := d.connect()
	dom, err := conn.LookupDomainByUUIDString(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := dom.Destroy(); err != nil {
		t.Fatal(err)
	}
	dom.Free()
	again, err := d.Create(ctx, cluster, with)
	if err != nil || again.ID != m.ID || again.DockerDisk != m.DockerDisk {
		t.Errorf("Create again: %v %+v, first %+v", err, again, m)
	}
	if n := logs.count("creating docker disk"); n != 1 {
		t.Errorf("docker disks created: %d, want 1", n)
	}

	// Machines reads the disk from the domains, not from a spec.
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 2 {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	if ms[0].Name != with.Name || ms[0].DockerDisk != "/dev/disk/by-id/virtio-provision-docker" || ms[1].DockerDisk != "" {
		t.Errorf("Machines: %s %q, %s %q", ms[0].Name, ms[0].DockerDisk, ms[1].Name, ms[1].DockerDisk)
	}

	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if dockerVolume(t, d, DockerDiskName(cluster, with.Name)) != nil {
		t.Errorf("docker volume after Destroy")
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Errorf("Destroy again: %v", err)
	}
	// By tags alone (the domain UUID unknown): the volume goes too.
	if _, err := d.Create(ctx, cluster, with); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, drivers.Machine{Name: with.Name, Tags: map[string]string{drivers.TagCluster: cluster}}); err != nil {
		t.Fatal(err)
	}
	if dockerVolume(t, d, DockerDiskName(cluster, with.Name)) != nil {
		t.Errorf("docker volume after Destroy by tags")
	}
	if err := d.Destroy(ctx, m2); err != nil {
		t.Fatal(err)
	}
	if vols, err := d.strayVolumes(conn, cluster); err != nil || len(vols) != 0 {
		t.Errorf("volumes left: %v %v", vols, err)
	}
	checkTestDomain(t, d)
}

// TestDockerDiskGenerations: each generation of a machine has a docker
// volume of its own, attached to its own domain; destroying one generation
// leaves the other's.
func TestDockerDiskGenerations(t *testing.T) {
	d, _ := newTestDriver(t, Config{Mode: ModeUser})
	cluster := drivertest.ClusterID(t)
	ctx := context.Background()
	g1 := specs(t, cluster, 1)[0]
	g1.DockerDiskGiB = 5
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
	v1, v2 := DockerDiskName(cluster, "vm-1"), DockerDiskName(cluster, "vm-1-g2")
	if got := dockerSources(t, d, dom1); strings.Join(got, " ") != v1+"@vdb" {
		t.Errorf("generation 1's docker disk: %v", got)
	}
	if got := dockerSources(t, d, dom2); strings.Join(got, " ") != v2+"@vdb" {
		t.Errorf("generation 2's docker disk: %v", got)
	}
	if m1.DockerDisk == "" || m2.DockerDisk == "" {
		t.Errorf("DockerDisk: generation 1 %q, generation 2 %q", m1.DockerDisk, m2.DockerDisk)
	}
	rs, err := d.Resources(ctx, cluster, []drivers.MachineSpec{{Name: "vm-1", DockerDiskGiB: 5}})
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	for _, r := range rs {
		if r.Action != drivers.ResourceKeep {
			t.Errorf("resource %+v", r)
		}
		kept[r.Name] = true
	}
	if len(rs) != 6 || !kept[v1] || !kept[v2] {
		t.Errorf("Resources: %+v, want both generations' three volumes kept", rs)
	}

	if err := d.Destroy(ctx, m1); err != nil {
		t.Fatal(err)
	}
	if dockerVolume(t, d, v1) != nil {
		t.Errorf("generation 1's docker volume after its Destroy")
	}
	if dockerVolume(t, d, v2) == nil {
		t.Errorf("generation 2's docker volume went with generation 1")
	}
	if err := d.Destroy(ctx, m2); err != nil {
		t.Fatal(err)
	}
	if dockerVolume(t, d, v2) != nil {
		t.Errorf("generation 2's docker volume after its Destroy")
	}
}

// TestDockerDiskInterruptedCreate: a docker volume made by a Create that
// stopped before the domain was defined is listed (kept while the machine
// is wanted, removed when not), replaced by the next Create, removed by it
// when the spec no longer asks for one, and removed by Teardown.
func TestDockerDiskInterruptedCreate(t *testing.T) {
	d, f := newTestDriver(t, Config{Mode: ModeUser})
	cluster := drivertest.ClusterID(t)
	ctx := context.Background()
	s := specs(t, cluster, 1)[0]
	s.DockerDiskGiB = 6
	vname := DockerDiskName(cluster, s.Name)
	fail := func(*lv.StorageVol) error { return errors.New("connection lost") }

	// Nothing yet: plan lists the docker disk to create.
	rs, err := d.Resources(ctx, cluster, []drivers.MachineSpec{s})
	if err != nil || len(rs) != 3 || rs[2].Name != vname || rs[2].Action != drivers.ResourceCreate {
		t.Errorf("Resources before anything: %+v %v", rs, err)
	}

	f.up = fail
	if _, err := d.Create(ctx, cluster, s); err == nil || !strings.Contains(err.Error(), "connection lost") {
		t.Fatalf("Create with a failing upload: %v", err)
	}
	if dockerVolume(t, d, vname) == nil {
		t.Fatalf("the interrupted create made no docker volume (it is made before the seed)")
	}
	rs, err = d.Resources(ctx, cluster, nil)
	if err != nil || len(rs) != 3 {
		t.Errorf("Resources after an interrupted create: %+v %v, want its three volumes", rs, err)
	}
	for _, r := range rs {
		if r.Action != drivers.ResourceRemove {
			t.Errorf("resource %+v, want remove", r)
		}
	}
	rs, err = d.Resources(ctx, cluster, []drivers.MachineSpec{s})
	if err != nil || len(rs) != 3 {
		t.Errorf("Resources with the machine wanted: %+v %v", rs, err)
	}
	for _, r := range rs {
		if r.Action != drivers.ResourceKeep {
			t.Errorf("resource %+v, want keep", r)
		}
	}

	// The next Create finishes the machine, with the size asked now.
	f.up = nil
	d.scan = pinAllScanner{d: d, specs: map[string]drivers.MachineSpec{DomainName(cluster, s.Name): s}}.scan
	s.DockerDiskGiB = 8
	m, err := d.Create(ctx, cluster, s)
	if err != nil {
		t.Fatalf("Create after the interrupted one: %v", err)
	}
	if v := dockerVolume(t, d, vname); v == nil || v.Capacity.Value*unitBytes(v.Capacity.Unit) != 8<<30 || m.DockerDisk == "" {
		t.Errorf("docker volume after the finishing Create: %+v, DockerDisk %q", v, m.DockerDisk)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}

	// Interrupted, then the spec asks for no docker disk: the next Create
	// removes the one left.
	f.up = fail
	d.Create(ctx, cluster, s)
	f.up = nil
	s.DockerDiskGiB = 0
	m, err = d.Create(ctx, cluster, s)
	if err != nil {
		t.Fatal(err)
	}
	if dockerVolume(t, d, vname) != nil || m.DockerDisk != "" {
		t.Errorf("a docker volume left for a machine that no longer asks for one (DockerDisk %q)", m.DockerDisk)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}

	// Interrupted, and the machine no longer wanted: Teardown removes it.
	s.DockerDiskGiB = 6
	f.up = fail
	d.Create(ctx, cluster, s)
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if dockerVolume(t, d, vname) != nil {
		t.Errorf("docker volume after Teardown")
	}
	if rs, err := d.Resources(ctx, cluster, nil); err != nil || len(rs) != 0 {
		t.Errorf("Resources after Teardown: %+v %v", rs, err)
	}
}
