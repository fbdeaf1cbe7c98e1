package hostos

import (
	"fmt"
	"strings"
)

// Family is what differs between supported distros: data, not flow.
type Family struct {
	Name     string // "debian-12", "ubuntu-24.04": the bundle directory prefix
	SSHUnit  string // sshd's systemd unit
	Dockerd  string // dockerd path in the distro's engine package
	Docker   string // docker CLI path
	Nft      string // nft path
	Sysctl   string // sysctl path
	Firewall string // package providing nft
	Updates  string // package for unattended upgrades
	Audit    string // package providing auditd
}

// families is the ordered table of supported distros; the first match wins.
var families = []struct {
	id, version string
	f           Family
}{
	{"debian", "12", Family{Name: "debian-12", SSHUnit: "ssh", Dockerd: "/usr/sbin/dockerd", Docker: "/usr/bin/docker", Nft: "/usr/sbin/nft", Sysctl: "/usr/sbin/sysctl", Firewall: "nftables", Updates: "unattended-upgrades", Audit: "auditd"}},
	{"ubuntu", "24.04", Family{Name: "ubuntu-24.04", SSHUnit: "ssh", Dockerd: "/usr/bin/dockerd", Docker: "/usr/bin/docker", Nft: "/usr/sbin/nft", Sysctl: "/usr/sbin/sysctl", Firewall: "nftables", Updates: "unattended-upgrades", Audit: "auditd"}},
	{"ubuntu", "22.04", Family{Name: "ubuntu-22.04", SSHUnit: "ssh", Dockerd: "/usr/bin/dockerd", Docker: "/usr/bin/docker", Nft: "/usr/sbin/nft", Sysctl: "/usr/sbin/sysctl", Firewall: "nftables", Updates: "unattended-upgrades", Audit: "auditd"}},
}

// Supported lists the supported distros as "id version".
func Supported() []string {
	out := make([]string, len(families))
	for i, r := range families {
		out[i] = r.id + " " + r.version
	}
	return out
}

// FamilyOf finds the distro family for an os-release, or explains why there
// is none.
func FamilyOf(os OSRelease) (Family, error) {
	for _, r := range families {
		if os.ID == r.id && os.VersionID == r.version {
			return r.f, nil
		}
	}
	name := strings.TrimSpace(os.ID + " " + os.VersionID)
	if os.Pretty != "" {
		name = fmt.Sprintf("%s (%s)", name, os.Pretty)
	}
	if name == "" {
		name = "without /etc/os-release"
	}
	return Family{}, fmt.Errorf("unsupported distro %s: provision supports %s", name, strings.Join(Supported(), ", "))
}

// family is FamilyOf for steps after os.supported (which already checked it).
func (t *Target) family() (Family, error) {
	if t.Facts == nil {
		return Family{}, fmt.Errorf("no facts gathered")
	}
	return FamilyOf(t.Facts.OS)
}
