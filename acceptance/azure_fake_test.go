//go:build acceptance

package acceptance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2/hclparse"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	_ "github.com/provision/provision/drivers/azure" // azureLoadBalancer builds the driver
	"github.com/provision/provision/drivers/azure/azuretest"
)

// Set in the re-executed test binary that runs inside the network namespace.
const azureNetnsEnv = "PROVISION_ACC_AZURE_NETNS" // "1": this process is the namespaced child

// TestAzureFakeEndToEnd drives the real provision binary (plan, apply,
// re-apply, adoption of an interrupted create, destroy) with the azure driver
// against azuretest: a stateful Resource Manager built on the SDK's fake
// servers, served over HTTPS on 127.0.0.1 together with the Microsoft Entra
// ID endpoints a client-secret credential uses. The binary runs its
// production code: the spec selects cloud = "custom" with that server as
// Resource Manager endpoint and authority host, azidentity's default chain
// finds the client secret in the environment, and Go trusts the server's
// certificate through SSL_CERT_FILE. There is no test-only switch in the
// binary.
//
// The fake hands out addresses (203.0.113.x, 10.42.0.x) that are not hosts,
// so the whole run happens in a fresh network namespace with only loopback
// up, as TestAWSMotoEndToEnd does: SSH then fails fast per host after every
// machine was created and recorded.
//
// Needs PROVISION_ACC=1 and permission to unshare the network namespace
// (root here); it skips otherwise, and fails instead when
// PROVISION_REQUIRE_NETNS=1 or PROVISION_REQUIRE_MOTO=1 (which .ci/run sets
// for the emulator tests).
func TestAzureFakeEndToEnd(t *testing.T) {
	if os.Getenv(azureNetnsEnv) == "1" {
		azureInNamespace(t)
		return
	}
	requireAcc(t)
	skipOrFail := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("PROVISION_REQUIRE_NETNS") == "1" || os.Getenv("PROVISION_REQUIRE_MOTO") == "1" {
			t.Fatalf("%s (PROVISION_REQUIRE_NETNS=1 or PROVISION_REQUIRE_MOTO=1)", msg)
		}
		t.Skipf("%s (PROVISION_REQUIRE_NETNS=1 turns this skip into a failure)", msg)
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		skipOrFail("unshare (util-linux) not in PATH: the azure end-to-end test runs only in its own network namespace")
	}
	if out, err := exec.Command("unshare", "-n", "--", "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		skipOrFail("cannot make a network namespace with loopback up (unshare -n needs CAP_SYS_ADMIN): %v: %s", err, strings.TrimSpace(string(out)))
	}
	bin := binary(t) // built here: the namespace has no module proxy
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parentNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "--", exe,
		"-test.run=^TestAzureFakeEndToEnd$", "-test.v", "-test.count=1", "-test.timeout=9m")
	cmd.Env = append(os.Environ(), azureNetnsEnv+"=1", motoParentNS+"="+parentNS, motoBinaryEnv+"="+bin)
	out, err := cmd.CombinedOutput()
	t.Logf("namespaced run:\n%s", out)
	if err != nil {
		t.Fatalf("namespaced run failed: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestAzureFakeEndToEnd") || strings.Contains(string(out), "--- SKIP") {
		t.Fatal("the namespaced run did not pass the test")
	}
}

// azureInNamespace is the test proper, in the child inside the namespace.
func azureInNamespace(t *testing.T) {
	motoIsolated(t)
	bin := os.Getenv(motoBinaryEnv)
	if bin == "" {
		t.Fatal(motoBinaryEnv + " not set by the parent")
	}
	buildOnce.Do(func() { binPath = bin })

	dir := t.TempDir()
	b := azuretest.New()
	srv, err := b.Serve(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	// The operator's own Azure setup stays out: no CLI profile, no other
	// identity than the fake's client secret.
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"AZURE_TOKEN_CREDENTIALS", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "AZURE_CLIENT_CERTIFICATE_PATH",
		"AZURE_USERNAME", "AZURE_PASSWORD", "IDENTITY_ENDPOINT", "MSI_ENDPOINT", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_SUBSCRIPTION_ID"} {
		os.Unsetenv(k) // this process is the namespaced child: its environment is its own
	}
	env := append([]string{"HOME=" + home, "AZURE_CONFIG_DIR=" + filepath.Join(home, ".azure")}, srv.Env(b.Subscription)...)

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rnd := make([]byte, 4)
	rand.Read(rnd)
	name := "az" + hex.EncodeToString(rnd)
	stateDir := filepath.Join(dir, "state")
	specFile := filepath.Join(dir, name+".hcl")
	spec := fmt.Sprintf(`
name = %q

driver "azure" {
  cloud                     = "custom"
  resource_manager_endpoint = %q
  authority_host            = %q
  location                  = "westeurope"
  allowed_cidrs             = ["198.51.100.7/32"]
}

managers {
  count = 3
}

workers {
  count = 1
  disk  = 40
}

# The fake's addresses are not hosts: give up on SSH after a few seconds.
ssh {
  connect_timeout = "3s"
}
`, name, srv.URL, srv.URL)
	if err := os.WriteFile(specFile, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(env []string, args ...string) result {
		t.Helper()
		return provision(t, ctx, env, append(args[:1:1], append([]string{specFile, "--state-dir", stateDir}, args[1:]...)...)...)
	}
	machines := []string{name + "-manager-1", name + "-manager-2", name + "-manager-3", name + "-worker-1"}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer ccancel()
			provision(t, cctx, env, "destroy", specFile, "--state-dir", stateDir, "--auto-approve")
		}
	})

	// plan without credentials still lists what would be made and says
	// what it could not check.
	noCreds := append(slices.Clone(env), "AZURE_CLIENT_SECRET=", "AZURE_CLIENT_ID=", "AZURE_TENANT_ID=")
	r := run(noCreds, "plan", "--no-color")
	all := r.stdout + r.stderr
	if r.code != 0 || !strings.Contains(all, "4 to create") || !strings.Contains(all, "no usable Azure credentials") || !strings.Contains(all, "not checked") {
		t.Fatalf("plan without credentials: exit %d\n%s", r.code, all)
	}
	if srv.Tokens() != 0 {
		t.Fatalf("a token was issued without credentials")
	}

	// plan with credentials: four machines, the shared resources, and the
	// managers spread over the three zones.
	r = run(env, "plan", "--no-color")
	all = r.stdout + r.stderr
	for _, want := range []string{"Plan: 4 to create, 0 to adopt", "resource-group provision-", "virtual-network provision-", "network-security-group provision-",
		fmt.Sprintf("managers: %s-manager-1 zone 1, %s-manager-2 zone 2, %s-manager-3 zone 3", name, name, name)} {
		if r.code != 0 || !strings.Contains(all, want) {
			t.Fatalf("plan lacks %q: exit %d\n%s", want, r.code, all)
		}
	}
	if strings.Contains(all, "could not") {
		t.Fatalf("plan with credentials could not ask the fake:\n%s", all)
	}

	// apply: every machine is created and recorded, then SSH fails per host.
	r = run(env, "apply", "--auto-approve")
	all = r.stdout + r.stderr
	if r.code != 1 {
		t.Fatalf("apply against the fake should fail at ssh.connect with exit 1, got %d\n%s", r.code, all)
	}
	st := readState(t, stateDir)
	if len(st.Machines) != 4 || st.ClusterID == "" {
		t.Fatalf("state after apply: %+v\n%s", st, all)
	}
	rg := "provision-" + st.ClusterID
	ids := map[string]string{}
	for _, m := range st.Machines {
		if !strings.Contains(m.ID, "/resourceGroups/"+rg+"/providers/Microsoft.Compute/virtualMachines/"+m.Name) ||
			!strings.HasPrefix(m.Address, "203.0.113.") || m.Status != "created" {
			t.Errorf("state of %s: %+v", m.Name, m)
		}
		ids[m.Name] = m.ID
		if !strings.Contains(all, m.Name+": machine.create changed: "+m.Address) {
			t.Errorf("apply output lacks the create of %s at %s", m.Name, m.Address)
		}
		line := motoLine(all, m.Name+": ssh.connect: ")
		if !strings.Contains(line, m.Address+":22") || !strings.Contains(line, "gave up after") ||
			!strings.Contains(line, "network is unreachable") && !strings.Contains(line, "i/o timeout") {
			t.Errorf("ssh.connect error of %s: %q", m.Name, line)
		}
	}
	for _, n := range machines {
		if ids[n] == "" {
			t.Errorf("%s not in state", n)
		}
	}
	if srv.Tokens() == 0 {
		t.Error("the binary never asked the token endpoint")
	}
	t.Logf("apply: %s (ssh.connect_timeout 3s)", r.took.Round(100*time.Millisecond))
	azureCheckVMs(t, b, stateDir, rg, st.ClusterID, machines)

	// Re-apply: the same VMs, nothing created.
	creates := b.Calls("VirtualMachinesClient.BeginCreateOrUpdate")
	r = run(env, "apply", "--auto-approve")
	if all := r.stdout + r.stderr; r.code != 1 || !strings.Contains(all, "(0 created, 0 removed)") || strings.Contains(all, "machine.create") {
		t.Fatalf("re-apply: exit %d\n%s", r.code, all)
	}
	if n := b.Calls("VirtualMachinesClient.BeginCreateOrUpdate"); n != creates {
		t.Errorf("re-apply sent %d VM creates", n-creates)
	}

	// An interrupted create: state holds only the intent for worker-1, the VM exists.
	interrupted := name + "-worker-1"
	motoForget(t, stateDir, interrupted)
	r = run(env, "plan", "--no-color")
	if line := motoLine(r.stdout+r.stderr, interrupted); r.code != 0 || !strings.Contains(line, "adopt") || !strings.Contains(line, ids[interrupted]) {
		t.Fatalf("plan after an interrupted create: exit %d, line %q\n%s", r.code, line, r.stdout+r.stderr)
	}
	r = run(env, "apply", "--auto-approve")
	if all := r.stdout + r.stderr; r.code != 1 || !strings.Contains(all, "(0 created, 0 removed)") {
		t.Fatalf("apply after an interrupted create: exit %d\n%s", r.code, all)
	}
	for _, m := range readState(t, stateDir).Machines {
		if m.Name == interrupted && (m.ID != ids[interrupted] || m.Address == "") {
			t.Errorf("adopted %s: %+v, want %s", m.Name, m, ids[interrupted])
		}
	}
	if n := b.Calls("VirtualMachinesClient.BeginCreateOrUpdate"); n != creates {
		t.Errorf("adoption sent %d VM creates", n-creates)
	}
	azureCheckVMs(t, b, stateDir, rg, st.ClusterID, machines)

	// The load balancer, as apply's phase makes it once a port is published
	// (the fake's VMs have no swarm to publish one): plan lists it, destroy
	// removes it before the VMs.
	azureLoadBalancer(t, ctx, env, srv.URL, st.ClusterID)
	r = run(env, "plan", "--no-color")
	if all := r.stdout + r.stderr; r.code != 0 || !strings.Contains(all, "load-balancer provision-"+st.ClusterID+"-lb") || !strings.Contains(all, "ports 80, 443") {
		t.Errorf("plan does not list the load balancer: exit %d\n%s", r.code, all)
	}

	// destroy: plan lists what goes; then the load balancer, then
	// everything of the cluster goes, the resource group with it.
	r = run(env, "destroy", "--auto-approve")
	if all := r.stdout + r.stderr; r.code != 0 || !strings.Contains(all, fmt.Sprintf("Destroyed cluster %q", name)) {
		t.Fatalf("destroy: exit %d\n%s", r.code, all)
	}
	if all := r.stdout + r.stderr; !strings.Contains(all, "lb.remove") || strings.Index(all, "lb.remove") > strings.Index(all, "machine.destroy") {
		t.Errorf("destroy did not remove the load balancer before the VMs:\n%s", all)
	}
	destroyed = true
	if left := b.Owned(st.ClusterID); len(left) > 0 || b.Count() != 0 {
		t.Errorf("left after destroy: %v (%d resources)", left, b.Count())
	}
	if r := run(env, "destroy", "--auto-approve"); r.code != 0 {
		t.Errorf("second destroy: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// azureCheckVMs asserts, in the backend, that the cluster has exactly the
// machines, managers in zones 1-3, each VM's tagged host key being the one
// pinned in state and the public half of the private key in its custom data.
func azureCheckVMs(t *testing.T, b *azuretest.Backend, stateDir, rg, cluster string, machines []string) {
	t.Helper()
	pinned := motoPinned(t, stateDir)
	var vms []string
	for _, r := range b.Owned(cluster) {
		if n, ok := strings.CutPrefix(r, "vm "); ok {
			vms = append(vms, n)
		}
	}
	if !slices.Equal(vms, machines) {
		t.Fatalf("vms of the cluster: %v, want %v", vms, machines)
	}
	for i, n := range machines {
		vm, custom := b.VM(rg, n)
		if i < 3 && (len(vm.Zones) != 1 || *vm.Zones[0] != fmt.Sprint(i+1)) {
			t.Errorf("%s: zones %v", n, vm.Zones)
		}
		tag := ""
		if v := vm.Tags["provision-hostkey"]; v != nil {
			tag = *v
		}
		begin := strings.Index(custom, "-----BEGIN OPENSSH PRIVATE KEY-----")
		const endMark = "-----END OPENSSH PRIVATE KEY-----"
		end := strings.Index(custom, endMark)
		if begin < 0 || end < begin {
			t.Fatalf("%s: no host key in the custom data", n)
		}
		var pem strings.Builder
		for _, l := range strings.Split(custom[begin:end+len(endMark)], "\n") {
			pem.WriteString(strings.TrimSpace(l) + "\n")
		}
		signer, err := ssh.ParsePrivateKey([]byte(pem.String()))
		if err != nil {
			t.Fatalf("%s: host key in the custom data: %v", n, err)
		}
		fromCustom := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
		if tag != fromCustom || pinned[n] != fromCustom {
			t.Errorf("%s: host key tagged %q, pinned %q, in custom data %q", n, tag, pinned[n], fromCustom)
		}
		if p := vm.Properties.OSProfile.LinuxConfiguration; p == nil || p.DisablePasswordAuthentication == nil || !*p.DisablePasswordAuthentication {
			t.Errorf("%s: password login not disabled", n)
		}
	}
}

// azureLoadBalancer makes the cluster's load balancer through the driver's
// own SyncPorts, in this (namespaced) process, with the binary's environment
// and endpoints: what apply's load-balancer phase does when services publish
// 80 and 443.
func azureLoadBalancer(t *testing.T, ctx context.Context, env []string, url, clusterID string) {
	t.Helper()
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v) // this process is the namespaced child: its environment is its own
	}
	src := fmt.Sprintf("cloud = \"custom\"\nresource_manager_endpoint = %q\nauthority_host = %q\nlocation = \"westeurope\"\nallowed_cidrs = [\"198.51.100.7/32\"]\n", url, url)
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "azure.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	info, _ := drivers.Lookup("azure")
	d, diags := info.New(f.Body, drivers.Options{Name: "azure", Log: slog.New(slog.DiscardHandler)})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	st, err := d.(drivers.Balancer).SyncPorts(ctx, clusterID, []drivers.PublishedPort{{Port: 80, Protocol: "tcp", Sources: []string{"0.0.0.0/0"}}, {Port: 443, Protocol: "tcp", Sources: []string{"0.0.0.0/0"}}})
	if err != nil || !st.Exists || st.Targets != 4 {
		t.Fatalf("load balancer: %+v %v", st, err)
	}
}
