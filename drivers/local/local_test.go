package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/drivertest"
)

// requireDocker skips when the engine or the host image is missing, unless
// PROVISION_REQUIRE_DOCKER=1, in which case it fails.
func requireDocker(t *testing.T, image string) {
	t.Helper()
	miss := func(msg string) {
		if os.Getenv("PROVISION_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s (PROVISION_REQUIRE_DOCKER=1)", msg)
		}
		t.Skip(msg)
	}
	if err := exec.Command("docker", "info").Run(); err != nil {
		miss("docker engine not available (`docker info` failed): " + err.Error())
	}
	if image != "" {
		if err := exec.Command("docker", "image", "inspect", image).Run(); err != nil {
			miss("host image " + image + " not present: run `make host-image`")
		}
	}
}

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func parse(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "test.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func newTestDriver(t *testing.T, src string) *Driver {
	t.Helper()
	d, diags := New(parse(t, src), drivers.Options{Name: "local", Log: testLog(t)})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	ld := d.(*Driver)
	t.Cleanup(func() { ld.Close() })
	return ld
}

func TestRegistered(t *testing.T) {
	info, ok := drivers.Lookup("local")
	if !ok || info.New == nil {
		t.Fatal("local driver not registered")
	}
}

func TestConfigDefaults(t *testing.T) {
	d := newTestDriver(t, ``)
	if c := d.Config(); c != (Config{Image: DefaultImage}) {
		t.Fatalf("defaults: %+v", c)
	}
	d = newTestDriver(t, `
image = "x/y:z"
internal = true
subnet = "172.30.7.9/24"
docker_host = "unix:///tmp/none.sock"
memory = "2GiB"
cpus = 1.5
`)
	want := Config{Image: "x/y:z", Internal: true, Subnet: "172.30.7.0/24", DockerHost: "unix:///tmp/none.sock", Memory: 2 << 30, CPUs: 1.5}
	if c := d.Config(); c != want {
		t.Fatalf("got %+v, want %+v", c, want)
	}
	// New does no I/O: a docker_host that does not exist is fine until used.
	_, err := d.Machines(context.Background(), "x")
	if err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("Machines on a missing socket: %v", err)
	}
}

func TestConfigDiagnostics(t *testing.T) {
	for _, tc := range []struct {
		name, src, summary string
		line               int
	}{
		{"unknown attribute", "image = \"a\"\nflavour = \"x\"\n", "Unsupported argument", 2},
		{"wrong type", "\ninternal = \"maybe\"\n", "Unsuitable value type", 2},
		{"cpus type", "cpus = \"lots\"\n", "Unsuitable value type", 1},
		{"bad subnet", "\n\nsubnet = \"10.0.0.0/33\"\n", "Invalid subnet", 3},
		{"bad memory", "memory = \"2 parsecs\"\n", "Invalid memory size", 1},
		{"tiny memory", "memory = \"1MiB\"\n", "Memory limit too small", 1},
		{"bad cpus", "cpus = -1\n", "Invalid CPU limit", 1},
		{"network and internal", "network = \"n\"\ninternal = true\n", "Conflicting network settings", 2},
		{"bad docker_host", "docker_host = \"nowhere\"\n", "Invalid docker_host", 1},
		{"ssh docker_host", "docker_host = \"ssh://ops@127.0.0.1\"\n", "Unsupported docker_host", 1},
		{"unix docker_host without path", "docker_host = \"unix://\"\n", "Invalid docker_host", 1},
		{"empty image", "image = \"\"\n", "Empty image", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, diags := New(parse(t, tc.src), drivers.Options{Log: slog.New(slog.DiscardHandler)})
			if !diags.HasErrors() {
				t.Fatalf("no error; driver %+v", d)
			}
			if d != nil {
				t.Errorf("driver returned with errors")
			}
			var found bool
			for _, dg := range diags {
				if dg.Summary == tc.summary {
					found = true
					if dg.Subject == nil || dg.Subject.Filename != "test.hcl" || dg.Subject.Start.Line != tc.line {
						t.Errorf("%q at %v, want test.hcl line %d", dg.Summary, dg.Subject, tc.line)
					}
				}
			}
			if !found {
				t.Errorf("diagnostics %v, want %q", diags, tc.summary)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"2GiB": 2 << 30, "512M": 512 << 20, "1073741824": 1 << 30, "1.5g": 3 << 29, " 64 MiB ": 64 << 20} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "2XB", "-1G", "1..2G"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestNames(t *testing.T) {
	if got := ContainerName("0123456789abcdef", "m-1"); got != "provision-0123456789ab-m-1" {
		t.Errorf("ContainerName = %q", got)
	}
	if got := VolumeName("0123456789abcdef", "m-1"); got != "provision-0123456789ab-m-1-docker" {
		t.Errorf("VolumeName = %q", got)
	}
	if got := NetworkName("ab/c"); got != "provision-ab-c" {
		t.Errorf("NetworkName = %q", got)
	}
}

// leftovers lists containers, volumes and networks labelled with the cluster.
func leftovers(t *testing.T, d *Driver, cluster string) []string {
	t.Helper()
	ctx := context.Background()
	cli, err := d.docker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := clusterFilter(cluster)
	var out []string
	cs, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		out = append(out, "container "+strings.Join(c.Names, ","))
	}
	vs, err := cli.VolumeList(ctx, volume.ListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs.Volumes {
		out = append(out, "volume "+v.Name)
	}
	ns, err := cli.NetworkList(ctx, network.ListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		out = append(out, "network "+n.Name)
	}
	return out
}

// cleanupCluster removes everything the test's cluster left, whatever failed.
func cleanupCluster(t *testing.T, d *Driver, cluster string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		ms, err := d.Machines(ctx, cluster)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		for _, m := range ms {
			if err := d.Destroy(ctx, m); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if err := d.Teardown(ctx, cluster); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// TestConformance runs the shared driver suite on two hosts created in
// parallel, then checks that Teardown leaves nothing labelled behind.
func TestConformance(t *testing.T) {
	requireDocker(t, DefaultImage)
	d := newTestDriver(t, ``)
	cluster := drivertest.ClusterID(t)
	cleanupCluster(t, d, cluster)
	admin, line := drivertest.AdminKey(t)
	specs := []drivers.MachineSpec{
		drivertest.Spec(t, cluster, "m1", "manager", line),
		drivertest.Spec(t, cluster, "w1", "worker", line),
	}
	specs[1].DiskGiB = 10 // accepted, ignored
	drivertest.Run(t, d, drivertest.Config{Cluster: cluster, Machines: specs, Admin: admin, Log: testLog(t)})
	if t.Failed() {
		return
	}
	ctx := context.Background()
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if left := leftovers(t, d, cluster); len(left) > 0 {
		t.Fatalf("after Teardown: %v", left)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
}

// TestInternalNetwork checks that `internal = true` makes an internal
// network, that the host is still reached over SSH, that a stopped host is
// started again by Create, and that Teardown refuses while a host remains.
func TestInternalNetwork(t *testing.T) {
	requireDocker(t, DefaultImage)
	subnet := fmt.Sprintf("10.231.%d.0/24", rand.IntN(250))
	d := newTestDriver(t, "internal = true\nsubnet = \""+subnet+"\"")
	cluster := drivertest.ClusterID(t)
	cleanupCluster(t, d, cluster)
	_, line := drivertest.AdminKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	spec := drivertest.Spec(t, cluster, "air", "manager", line)

	// Two Creates of one name at once make one container.
	var ms [2]drivers.Machine
	var errs [2]error
	var wg sync.WaitGroup
	for i := range ms {
		wg.Go(func() { ms[i], errs[i] = d.Create(ctx, cluster, spec) })
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	m := ms[0]
	if ms[1].ID != m.ID {
		t.Fatalf("concurrent Creates of one name made %s and %s", m.ID, ms[1].ID)
	}
	if p := netip.MustParsePrefix(subnet); !p.Contains(netip.MustParseAddr(m.Address)) {
		t.Errorf("address %s outside subnet %s", m.Address, subnet)
	}
	cli, err := d.docker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := cli.NetworkInspect(ctx, NetworkName(cluster), network.InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !n.Internal {
		t.Errorf("network %s is not internal", n.Name)
	}
	if n.Labels[drivers.TagCluster] != cluster {
		t.Errorf("network labels %v", n.Labels)
	}
	info, err := cli.ContainerInspect(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Hostname != "air" || info.Config.StopSignal != "SIGRTMIN+3" {
		t.Errorf("hostname %q, stop signal %q", info.Config.Hostname, info.Config.StopSignal)
	}
	var vol bool
	for _, mp := range info.Mounts {
		if mp.Destination == "/var/lib/docker" && mp.Name == VolumeName(cluster, "air") {
			vol = true
		}
	}
	if !vol {
		t.Errorf("no named volume on /var/lib/docker: %+v", info.Mounts)
	}

	// Teardown refuses while the host exists.
	if err := d.Teardown(ctx, cluster); err == nil || !strings.Contains(err.Error(), "containers remain") {
		t.Errorf("Teardown with a host left: %v", err)
	}

	// A stopped host is started by Create, not duplicated, also when it
	// serves a key of its own by now (the engine replaces the installed
	// key on its first connection): the engine's pinned connection checks
	// that key, not the driver against its label (issue 12).
	if out, code, err := execResult(ctx, cli, m.ID, []string{"sh", "-c", "rm -f /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key"}); err != nil || code != 0 {
		t.Fatalf("new host key: %v %d %s", err, code, out)
	}
	timeout := 20
	if err := cli.ContainerStop(ctx, m.ID, container.StopOptions{Timeout: &timeout}); err != nil {
		t.Fatal(err)
	}
	stopped, err := d.Machines(ctx, cluster)
	if err != nil || len(stopped) != 1 || stopped[0].State != "stopped" {
		t.Fatalf("Machines after stop: %+v, %v", stopped, err)
	}
	m2, err := d.Create(ctx, cluster, spec)
	if err != nil {
		t.Fatal(err)
	}
	if m2.ID != m.ID || m2.State != "running" {
		t.Errorf("Create on a stopped host: %+v, first %+v", m2, m)
	}
	// Destroy finds the container by cluster tag and name when the ID is unknown.
	if err := d.Destroy(ctx, drivers.Machine{Name: "air", Tags: map[string]string{drivers.TagCluster: cluster}}); err != nil {
		t.Fatal(err)
	}
	if left, err := d.Machines(ctx, cluster); err != nil || len(left) != 0 {
		t.Fatalf("Machines after Destroy: %+v, %v", left, err)
	}
	if err := d.Destroy(ctx, m2); err != nil {
		t.Fatalf("Destroy of a gone machine: %v", err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, d, cluster); len(left) > 0 {
		t.Fatalf("after Teardown: %v", left)
	}
}

func TestPreflight(t *testing.T) {
	requireDocker(t, DefaultImage)
	ctx := context.Background()
	d := newTestDriver(t, ``)
	if err := d.Preflight(ctx, nil); err != nil {
		t.Fatalf("Preflight with the default image: %v", err)
	}
	missing := "provision/no-such-image:" + drivertest.ClusterID(t)
	d = newTestDriver(t, `image = "`+missing+`"`)
	err := d.Preflight(ctx, nil)
	want := "host image " + missing + " not found: run `make host-image`"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Preflight with a missing image: %v, want %q", err, want)
	}
	d = newTestDriver(t, `network = "provision-no-such-network-`+drivertest.ClusterID(t)+`"`)
	if err := d.Preflight(ctx, nil); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("Preflight with a missing network: %v", err)
	}
}

// TestGenerationsSizeAndBinding: two generations of one machine coexist
// (distinct containers and volumes, the host name stays), each with the
// CPU and memory limits of its pool size; destroying the first by its tags
// leaves the second; the first create records the engine the cluster lives
// on, and a driver that then finds another engine (or is pointed elsewhere
// by DOCKER_HOST) refuses or ignores it as documented.
func TestGenerationsSizeAndBinding(t *testing.T) {
	requireDocker(t, DefaultImage)
	stateDir := t.TempDir()
	mk := func() *Driver {
		d, diags := New(parse(t, ``), drivers.Options{Name: "local", Log: testLog(t), StateDir: stateDir})
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		ld := d.(*Driver)
		t.Cleanup(func() { ld.Close() })
		return ld
	}
	d := mk()
	cluster := drivertest.ClusterID(t)
	cleanupCluster(t, d, cluster)
	_, line := drivertest.AdminKey(t)
	ctx := context.Background()
	g1 := drivertest.Spec(t, cluster, "m1", "manager", line)
	g1.Size = "1cpu-512m"
	m1, err := d.Create(ctx, cluster, g1)
	if err != nil {
		t.Fatal(err)
	}
	g2 := drivertest.Spec(t, cluster, "m1", "manager", line)
	g2.Size, g2.Generation = "2cpu-1g", 2
	g2.Tags[drivers.TagGeneration] = "2"
	m2, err := d.Create(ctx, cluster, g2)
	if err != nil {
		t.Fatal(err)
	}
	cli, _ := d.docker(ctx)
	for _, c := range []struct {
		m      drivers.Machine
		name   string
		cpus   int64
		memory int64
	}{{m1, ContainerName(cluster, "m1"), 1e9, 512 << 20}, {m2, ContainerName(cluster, "m1-g2"), 2e9, 1 << 30}} {
		info, err := cli.ContainerInspect(ctx, c.m.ID)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(info.Name, "/") != c.name || info.Config.Hostname != "m1" || info.HostConfig.NanoCPUs != c.cpus || info.HostConfig.Memory != c.memory {
			t.Errorf("%s: name %s hostname %s cpus %d memory %d", c.name, info.Name, info.Config.Hostname, info.HostConfig.NanoCPUs, info.HostConfig.Memory)
		}
	}
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 2 || ms[0].Name != "m1" || ms[1].Name != "m1" {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	// Destroy generation 1 by its tags alone: generation 2 and its volume stay.
	if err := d.Destroy(ctx, drivers.Machine{Name: "m1", Tags: map[string]string{drivers.TagCluster: cluster}}); err != nil {
		t.Fatal(err)
	}
	ms, _ = d.Machines(ctx, cluster)
	if len(ms) != 1 || ms[0].ID != m2.ID {
		t.Fatalf("after destroying generation 1: %+v", ms)
	}
	if _, err := cli.VolumeInspect(ctx, VolumeName(cluster, "m1-g2")); err != nil {
		t.Errorf("generation 2's volume: %v", err)
	}
	if _, err := cli.VolumeInspect(ctx, VolumeName(cluster, "m1")); err == nil {
		t.Errorf("generation 1's volume is left")
	}

	// The binding: recorded by the first create.
	b, err := readBinding(d.bindPath)
	if err != nil || b == nil || b.EngineID != d.engine.ID || b.Endpoint == "" {
		t.Fatalf("binding %+v %v", b, err)
	}
	// DOCKER_HOST pointing elsewhere (as after `provision env`) is not followed.
	certs := t.TempDir()
	os.WriteFile(certs+"/ca-key.pem", []byte("x"), 0o600)
	t.Setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
	t.Setenv("DOCKER_CERT_PATH", certs)
	t.Setenv("DOCKER_TLS_VERIFY", "1")
	if ms, err := mk().Machines(ctx, cluster); err != nil || len(ms) != 1 {
		t.Fatalf("bound driver with DOCKER_HOST elsewhere: %v %+v", err, ms)
	}
	// Unbound, the same environment is refused: it names a cluster node.
	unbound, diags := New(parse(t, ``), drivers.Options{Name: "local", Log: testLog(t), StateDir: t.TempDir()})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if _, err := unbound.Machines(ctx, cluster); err == nil || !strings.Contains(err.Error(), "points at a node of a provision cluster") {
		t.Fatalf("unbound driver with provision env's DOCKER_HOST: %v", err)
	}
	// A binding to another engine is refused, naming both.
	b.EngineID = "OTHER:ENGINE"
	raw, _ := json.Marshal(b)
	if err := os.WriteFile(d.bindPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := mk().Machines(ctx, cluster); err == nil || !strings.Contains(err.Error(), "OTHER:ENGINE") || !strings.Contains(err.Error(), d.engine.ID) {
		t.Fatalf("binding to another engine: %v", err)
	}
}

// TestAddressesSurviveRestarts: the driver's network has a subnet of its
// own and every container a fixed address in it, so the engine restarting
// containers in another order (a reboot of this machine) gives each its
// address back, not a neighbour's: the swarm, the firewall peers and
// daemon.json name those addresses.
func TestAddressesSurviveRestarts(t *testing.T) {
	requireDocker(t, DefaultImage)
	d := newTestDriver(t, "")
	cluster := drivertest.ClusterID(t)
	cleanupCluster(t, d, cluster)
	_, line := drivertest.AdminKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var ms [3]drivers.Machine
	var errs [3]error
	var wg sync.WaitGroup
	for i := range ms {
		wg.Go(func() {
			ms[i], errs[i] = d.Create(ctx, cluster, drivertest.Spec(t, cluster, fmt.Sprintf("n%d", i+1), "worker", line))
		})
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	cli, err := d.docker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := cli.NetworkInspect(ctx, NetworkName(cluster), network.InspectOptions{})
	if err != nil || len(n.IPAM.Config) != 1 || n.IPAM.Config[0].Gateway == "" {
		t.Fatalf("network %s: no subnet and gateway of its own: %v %+v", NetworkName(cluster), err, n.IPAM)
	}
	want := map[string]string{}
	for _, m := range ms {
		info, err := cli.ContainerInspect(ctx, m.ID)
		if err != nil {
			t.Fatal(err)
		}
		ep := info.NetworkSettings.Networks[NetworkName(cluster)]
		if ep == nil || ep.IPAMConfig == nil || ep.IPAMConfig.IPv4Address != m.Address {
			t.Fatalf("%s: address %s not fixed: %+v", m.Name, m.Address, ep)
		}
		if slices.Contains(slices.Collect(maps.Values(want)), m.Address) {
			t.Fatalf("address %s given twice", m.Address)
		}
		want[m.ID] = m.Address
	}
	timeout := 10
	for _, m := range ms {
		if err := cli.ContainerStop(ctx, m.ID, container.StopOptions{Timeout: &timeout}); err != nil {
			t.Fatal(err)
		}
	}
	for i := len(ms) - 1; i >= 0; i-- { // the other way round
		if err := cli.ContainerStart(ctx, ms[i].ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	now, err := d.Machines(ctx, cluster)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range now {
		if m.Address != want[m.ID] {
			t.Errorf("%s: address %s after the restarts, was %s", m.Name, m.Address, want[m.ID])
		}
	}
}

// TestNetworkWithoutSubnet: on a network named in the block that was made
// without a subnet of its own, the engine refuses fixed addresses (at
// start); the container is made again with an address the engine picks.
func TestNetworkWithoutSubnet(t *testing.T) {
	requireDocker(t, DefaultImage)
	netName := "provision-test-nosubnet-" + strconv.Itoa(rand.IntN(1e6))
	d := newTestDriver(t, fmt.Sprintf("network = %q", netName))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cli, err := d.docker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.NetworkCreate(ctx, netName, network.CreateOptions{Driver: "bridge"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.NetworkRemove(context.Background(), netName) })
	cluster := drivertest.ClusterID(t)
	cleanupCluster(t, d, cluster)
	_, line := drivertest.AdminKey(t)
	m, err := d.Create(ctx, cluster, drivertest.Spec(t, cluster, "free", "worker", line))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cli.ContainerInspect(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ep := info.NetworkSettings.Networks[netName]; ep == nil || ep.IPAddress != m.Address || m.Address == "" {
		t.Errorf("address %q, endpoint %+v", m.Address, ep)
	}
}
