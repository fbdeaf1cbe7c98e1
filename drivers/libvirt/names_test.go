package libvirt

import "testing"

// TestVolumeOf: the volumes (disk, seed, docker disk) of every generation
// of a machine, and no other machine's.
func TestVolumeOf(t *testing.T) {
	c := "c0ffee"
	for _, tc := range []struct {
		vol  string
		want bool
	}{
		{DiskName(c, "vm-1"), true},
		{SeedName(c, "vm-1"), true},
		{DiskName(c, "vm-1-g2"), true},
		{SeedName(c, "vm-1-g12"), true},
		{DiskName(c, "vm-1-g1"), false},
		{DiskName(c, "vm-1-g02"), false},
		{DiskName(c, "vm-12"), false},
		{DiskName(c, "vm-1-gx"), false},
		{DomainName(c, "vm-1"), false},
		{DiskName("other", "vm-1"), false},
		{DockerDiskName(c, "vm-1"), true},
		{DockerDiskName(c, "vm-1-g2"), true},
		{DockerDiskName(c, "vm-1-g1"), false},
		{DockerDiskName(c, "vm-12"), false},
		{DockerDiskName("other", "vm-1"), false},
		{DomainName(c, "vm-1") + "-docker.iso", false},
		{DomainName(c, "vm-1") + "-g2-docker", false},
	} {
		if got := volumeOf(c, "vm-1", tc.vol); got != tc.want {
			t.Errorf("volumeOf(%q) = %v, want %v", tc.vol, got, tc.want)
		}
	}
}
