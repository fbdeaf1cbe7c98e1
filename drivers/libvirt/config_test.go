package libvirt

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/drivertest"
	"github.com/provision/provision/provision/spec"
)

func decode(t *testing.T, src string) (Config, hcl.Diagnostics) {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "lv.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return decodeConfig(f.Body, nil)
}

func TestConfigDefaults(t *testing.T) {
	c, diags := decode(t, `image = "base.qcow2"
network = "lab"`)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if c.URI != DefaultURI || c.DomainType != "kvm" || c.Pool != "default" || c.ImagePool != "default" || c.Mode != ModeNetwork ||
		c.MachineType != "q35" || c.BootTimeout != DefaultBootTimeout || c.ShutdownTimeout != DefaultShutdownTimeout {
		t.Errorf("defaults: %+v", c)
	}
	c, diags = decode(t, `uri = "qemu+ssh://ops@hv1/system"
domain_type = "qemu"
pool = "vms"
image = "/var/lib/libvirt/images/debian.qcow2"
image_pool = "images"
network_cidr = "10.213.0.7/24"
boot_timeout = "4m"`)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if c.Mode != ModeCreate || c.NetworkCIDR.String() != "10.213.0.0/24" || c.ImagePool != "images" || c.BootTimeout.Minutes() != 4 {
		t.Errorf("config: %+v", c)
	}
}

// TestConfigSpread: uris spreads machines over hypervisors, one zone each.
func TestConfigSpread(t *testing.T) {
	c, diags := decode(t, "image = \"b\"\nbridge = \"br0\"\nuris = [\"qemu+ssh://ops@kvm1.lab/system\", \"qemu+ssh://ops@kvm2.lab/system\", \"qemu:///system\"]")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if len(c.URIs) != 3 || c.URI != c.URIs[0] || ZoneOf(c.URIs[0]) != "kvm1.lab" || ZoneOf(c.URIs[2]) != "qemu:///system" {
		t.Errorf("config: %+v, zones %s %s", c, ZoneOf(c.URIs[0]), ZoneOf(c.URIs[2]))
	}
	if c, _ := decode(t, "image = \"b\"\nbridge = \"br0\""); len(c.URIs) != 1 || c.URIs[0] != DefaultURI {
		t.Errorf("one hypervisor: %v", c.URIs)
	}
}

// TestConfigErrors: every mistake is reported at its attribute, all at once.
func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ src, want, at string }{
		{`image = "b"`, "No network for the machines", "lv.hcl:1,1"},
		{"image = \"b\"\nnetwork = \"lab\"\nuser_network = true", "Several network modes", "lv.hcl:3,16"},
		{"image = \"b\"\nuri = \"qemu+ssh://h/system\"\nuser_network = true", "User-mode networking on a remote hypervisor", "lv.hcl:3,16"},
		{"image = \"b\"\nnetwork_cidr = \"192.168.122.0/25\"", "overlaps libvirt's default network", "lv.hcl:2,16"},
		{"image = \"b\"\nnetwork_cidr = \"8.8.8.0/24\"", "Public network CIDR", "lv.hcl:2,16"},
		{"image = \"b\"\nnetwork_cidr = \"10.0.0.0/8\"", "Invalid network CIDR", "lv.hcl:2,16"},
		{"image = \"b\"\nbridge = \"a-very-long-bridge-name\"", "Invalid bridge", "lv.hcl:2,10"},
		{"network = \"lab\"", "No base image", "lv.hcl:1,1"},
		{"image = \"b\"\nnetwork = \"lab\"\ndomain_type = \"kvm64\"", "Invalid domain type", "lv.hcl:3,15"},
		{"image = \"b\"\nnetwork = \"lab\"\nuri = \"nothing\"", "Invalid libvirt URI", "lv.hcl:3,7"},
		{"image = \"b\"\nnetwork = \"lab\"\nboot_timeout = \"soon\"", "Invalid duration", "lv.hcl:3,16"},
		{"image = \"b\"\nnetwork = \"lab\"\npool = \"a/b\"", "Invalid name", "lv.hcl:3,8"},
		{"image = \"b\"\nnetwork = \"lab\"\nserial_log_dir = \"logs\"", "Relative path", "lv.hcl:3,18"},
		{"image = \"b\"\nnetwork = \"lab\"\nuri = \"qemu:///system\"\nuris = [\"qemu+ssh://a/system\"]", "Both uri and uris", "lv.hcl:4,8"},
		{"image = \"b\"\nnetwork = \"lab\"\nuris = []", "No hypervisors", "lv.hcl:3,8"},
		{"image = \"b\"\nnetwork = \"lab\"\nuris = [\"qemu+ssh://ops@kvm1/system\", \"qemu+ssh://kvm1/system\"]", "One hypervisor named twice", "lv.hcl:3,8"},
		{"image = \"b\"\nnetwork = \"lab\"\nuris = [\"qemu+ssh://a/system\", \"nothing\"]", "Invalid libvirt URI", "lv.hcl:3,8"},
		{"image = \"b\"\nnetwork_cidr = \"10.213.0.0/24\"\nuris = [\"qemu+ssh://a/system\", \"qemu+ssh://b/system\"]", "A private network cannot span hypervisors", "lv.hcl:2,16"},
		// URIs that would run a program here (plan connects too), skip the
		// hypervisor's key check, or are not QEMU over an allowed transport.
		{"image = \"b\"\nnetwork = \"lab\"\nuri = \"qemu+ext:///system?command=/tmp/x.sh\"", "transport \"ext\" is not allowed", "lv.hcl:3,7"},
		{"image = \"b\"\nnetwork = \"lab\"\nuri = \"qemu+ssh://ops@hv/system?command=/tmp/x.sh\"", "parameter \"command\" is not allowed", "lv.hcl:3,7"},
		{"image = \"b\"\nnetwork = \"lab\"\nuri = \"qemu+ssh://ops@hv/system?no_verify=1\"", "parameter \"no_verify\" is not allowed", "lv.hcl:3,7"},
		{"image = \"b\"\nnetwork = \"lab\"\nuri = \"qemu+libssh://ops@hv/system?known_hosts_verify=ignore\"", "known_hosts_verify must be", "lv.hcl:3,7"},
		{"image = \"b\"\nnetwork = \"lab\"\nuri = \"qemu+tcp://hv/system\"", "transport \"tcp\" is not allowed", "lv.hcl:3,7"},
		{"image = \"b\"\nnetwork = \"lab\"\nuri = \"xen:///system\"", "must start with qemu://", "lv.hcl:3,7"},
		{"image = \"b\"\nnetwork = \"lab\"\nuris = [\"qemu+ssh://a/system\", \"qemu+ssh://b/system?COMMAND=x\"]", "parameter \"COMMAND\" is not allowed", "lv.hcl:3,8"},
	} {
		_, diags := decode(t, tc.src)
		if !diags.HasErrors() {
			t.Errorf("%q: accepted", tc.src)
			continue
		}
		got := diags.Error()
		if !strings.Contains(got, tc.want) || !strings.Contains(got, tc.at) {
			t.Errorf("%q: %s\nwant %q at %s", tc.src, got, tc.want, tc.at)
		}
	}
}

// TestSizeCheck: the spec refuses a libvirt pool size that is not "<n>cpu-<mem>".
func TestSizeCheck(t *testing.T) {
	info, _ := drivers.Lookup("libvirt")
	if info.CheckSize == nil || info.CheckSize("2cpu-2g") != nil || info.CheckSize("t3.small") == nil {
		t.Error("the libvirt size check must accept 2cpu-2g and refuse t3.small")
	}
	if r, err := resources(""); err != nil || r.CPUs != 2 || r.MemoryMiB != 2048 {
		t.Errorf("default size: %+v %v", r, err)
	}
}

func TestDomainXMLUserNetwork(t *testing.T) {
	cluster := drivertest.ClusterID(t)
	_, admin := drivertest.AdminKey(t)
	s := drivertest.Spec(t, cluster, "m1", "manager", admin)
	mt := newMeta(cluster, s, ModeUser, 40022, 40376)
	ms, err := mt.marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := parseMeta(ms)
	if err != nil || back.SSHPort != 40022 || back.EnginePort != 40376 || back.tags()[drivers.TagCluster] != cluster || back.HostKey != s.HostKey.Public {
		t.Fatalf("metadata round trip: %+v %v\n%s", back, err, ms)
	}
	x, err := domainXML(domainSpec{Name: DomainName(cluster, "m1"), Type: "qemu", Machine: "q35", Res: drivers.Resources{CPUs: 2, MemoryMiB: 2048},
		Pool: "p", Disk: "d.qcow2", Seed: "s.iso", Meta: ms, Mode: ModeUser, SSHPort: 40022, EnginePort: 40376})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`<domain type="qemu"`,
		`hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40376-:2376`,
		`virtio-net-pci,netdev=provnet0,bus=pcie.0,addr=0x10`, // without the address QEMU will not start on q35
		`<source pool="p" volume="d.qcow2"`,
		`<provision:machine xmlns:provision="` + MetadataNS + `">`,
		`<acpi></acpi>`,
	} {
		if !strings.Contains(x, want) {
			t.Errorf("domain XML lacks %s:\n%s", want, x)
		}
	}
	if strings.Contains(x, "<interface") {
		t.Errorf("user-mode domain has a libvirt interface:\n%s", x)
	}
}

func TestNetworkXML(t *testing.T) {
	x, err := networkXML("c0ffee00c0ffee00", netip.MustParsePrefix("10.213.0.0/28"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`<name>provision-c0ffee00c0ff</name>`, `<bridge name="pv-c0ffee00c0ff"`, `address="10.213.0.1" prefix="28"`, `start="10.213.0.2" end="10.213.0.14"`} {
		if !strings.Contains(x, want) {
			t.Errorf("network XML lacks %s:\n%s", want, x)
		}
	}
}

// TestSpecRefusesBadSize: a libvirt pool's size is checked by spec.Load,
// with the attribute's position.
func TestSpecRefusesBadSize(t *testing.T) {
	src := "name = \"vm\"\ndriver \"libvirt\" {\n  image = \"b.qcow2\"\n  user_network = true\n}\nmanagers {\n  size = \"t3.small\"\n}\n"
	_, diags := spec.LoadBytes("vm.hcl", []byte(src), spec.Vars{})
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "vm.hcl:7,10") || !strings.Contains(diags.Error(), "Invalid size") {
		t.Fatalf("diagnostics: %v", diags)
	}
	if _, diags := spec.LoadBytes("vm.hcl", []byte(strings.Replace(src, "t3.small", "1cpu-512m", 1)), spec.Vars{}); diags.HasErrors() {
		t.Fatalf("1cpu-512m: %v", diags)
	}
}

// TestReplaceInPlace: in user-mode networking two generations of a machine
// could not reach each other, so the driver asks for in-place replacement;
// on a network they can, it does not.
func TestReplaceInPlace(t *testing.T) {
	c, diags := decode(t, "image = \"debian.qcow2\"\nuser_network = true\n")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if why := (&Driver{cfg: c}).ReplaceInPlace(); !strings.Contains(why, "user-mode") {
		t.Errorf("user-mode networking: %q", why)
	}
	c, diags = decode(t, "image = \"debian.qcow2\"\nnetwork = \"lab\"\n")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if why := (&Driver{cfg: c}).ReplaceInPlace(); why != "" {
		t.Errorf("an existing network: %q", why)
	}
}

// TestConfigURIsAccepted: the transports and parameters an operator needs
// stay open.
func TestConfigURIsAccepted(t *testing.T) {
	for _, uri := range []string{
		"qemu:///system", "qemu:///session", "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
		"qemu+ssh://ops@hv1/system?keyfile=/home/ops/.ssh/id_ed25519&known_hosts=/home/ops/.ssh/known_hosts",
		"qemu+libssh2://ops@hv1/system?known_hosts_verify=normal&sshauth=privkey", "qemu+tls://hv1.lab/system?pkipath=/etc/pki/ops",
	} {
		if _, diags := decode(t, "image = \"b\"\nnetwork = \"lab\"\nuri = \""+uri+"\""); diags.HasErrors() {
			t.Errorf("%s: %s", uri, diags.Error())
		}
	}
}
