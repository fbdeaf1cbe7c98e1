package libvirt

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/provision/provision/drivers"
)

// TestDomainXMLDockerDisk: a domain asked for a docker disk has it as a
// second virtio disk (vdb) from its pool volume, with the serial the
// guest's udev names it by, and reading the XML back finds it; a domain
// not asked for one has neither.
func TestDomainXMLDockerDisk(t *testing.T) {
	ds := domainSpec{Name: "d", Type: "qemu", Machine: "q35", Res: drivers.Resources{CPUs: 1, MemoryMiB: 512},
		Pool: "p", Disk: "d.qcow2", Seed: "s.iso", Mode: ModeNetwork, Network: "lab"}
	without, err := domainXML(ds)
	if err != nil {
		t.Fatal(err)
	}
	ds.Docker = "d-docker.qcow2"
	with, err := domainXML(ds)
	if err != nil {
		t.Fatal(err)
	}

	var x libvirtxml.Domain
	if err := x.Unmarshal(with); err != nil {
		t.Fatal(err)
	}
	var docker []libvirtxml.DomainDisk
	for _, disk := range x.Devices.Disks {
		if disk.Source != nil && disk.Source.Volume != nil && disk.Source.Volume.Volume == "d-docker.qcow2" {
			docker = append(docker, disk)
		}
	}
	if len(docker) != 1 {
		t.Fatalf("disks of the docker volume: %d, want 1:\n%s", len(docker), with)
	}
	disk := docker[0]
	if disk.Device != "disk" || disk.Serial != "provision-docker" || disk.Target == nil || disk.Target.Dev != "vdb" || disk.Target.Bus != "virtio" ||
		disk.Source.Volume.Pool != "p" || disk.Driver == nil || disk.Driver.Type != "qcow2" {
		t.Errorf("docker disk %+v:\n%s", disk, with)
	}
	if x.Devices.Disks[0].Target.Dev != "vda" || x.Devices.Disks[0].Source.Volume.Volume != "d.qcow2" {
		t.Errorf("the root disk is no longer the first (the one booted):\n%s", with)
	}
	if got := dockerDiskOf(&x); got != "/dev/disk/by-id/virtio-provision-docker" {
		t.Errorf("dockerDiskOf = %q", got)
	}

	for _, no := range []string{"<serial>", `dev="vdb"`, "docker"} {
		if strings.Contains(without, no) {
			t.Errorf("domain without a docker disk has %s:\n%s", no, without)
		}
	}
	var y libvirtxml.Domain
	if err := y.Unmarshal(without); err != nil {
		t.Fatal(err)
	}
	if got := dockerDiskOf(&y); got != "" {
		t.Errorf("dockerDiskOf without one = %q", got)
	}
	if got := dockerDiskOf(&libvirtxml.Domain{}); got != "" {
		t.Errorf("dockerDiskOf of a domain without devices = %q", got)
	}
}

// TestWouldCreateDockerDisk: plan lists a docker volume, blank, for the
// machines that ask for one, and only for them; each generation its own.
func TestWouldCreateDockerDisk(t *testing.T) {
	c := Config{Pool: "p", Image: "base.qcow2", Mode: ModeUser}
	rs := c.wouldCreate("c0ffee", []drivers.MachineSpec{
		{Name: "vm-1", DockerDiskGiB: 20},
		{Name: "vm-2"},
		{Name: "vm-3", DockerDiskGiB: 20, Generation: 2},
	})
	notes := map[string]string{}
	for _, r := range rs {
		if r.Kind != "volume" || r.Action != drivers.ResourceCreate {
			t.Errorf("resource %+v", r)
		}
		notes[r.Name] = r.Note
	}
	if len(rs) != 8 {
		t.Errorf("resources: %d, want 8 (three disks, three seeds, two docker disks): %+v", len(rs), rs)
	}
	for _, v := range []string{DockerDiskName("c0ffee", "vm-1"), DockerDiskName("c0ffee", "vm-3-g2")} {
		if !strings.HasPrefix(notes[v], "blank, for /var/lib/docker") {
			t.Errorf("volume %s: note %q (listed: %v)", v, notes[v], notes)
		}
	}
	if _, ok := notes[DockerDiskName("c0ffee", "vm-2")]; ok {
		t.Errorf("a docker disk for vm-2, which asks for none: %v", notes)
	}
	if n := notes[DiskName("c0ffee", "vm-1")]; !strings.HasPrefix(n, "backed by base.qcow2") {
		t.Errorf("root disk note %q", n)
	}
}
