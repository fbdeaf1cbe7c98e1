package azure

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v6"
	"github.com/hashicorp/hcl/v2/hclparse"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/azure/azuretest"
	"github.com/provision/provision/drivers/drivertest"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// testDriver runs the real factory on an HCL body and plugs the backend's
// in-process transport and a fake credential into the SDK clients.
func testDriver(t *testing.T, b *azuretest.Backend, body string) *Driver {
	t.Helper()
	src := fmt.Sprintf("location = %q\nsubscription_id = %q\n%s\n", b.Location, b.Subscription, body)
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "azure.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	dr, diags := New(f.Body, drivers.Options{Name: "azure"})
	if diags.HasErrors() {
		t.Fatalf("New: %v", diags)
	}
	d := dr.(*Driver)
	d.transport = &swap{cur: b.Transport()}
	d.cred = &azfake.TokenCredential{}
	d.pollEvery = time.Millisecond
	d.retry = policy.RetryOptions{MaxRetries: 4, RetryDelay: time.Millisecond, MaxRetryDelay: 5 * time.Millisecond}
	return d
}

const allowed = `allowed_cidrs = ["198.51.100.7/32"]`

var adminLine = func() string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " provision-admin"
}()

func spec(t testing.TB, cluster, pool string, i int) drivers.MachineSpec {
	role := "worker"
	if pool == "manager" {
		role = "manager"
	}
	s := drivertest.Spec(t, cluster, fmt.Sprintf("c-%s-%d", pool, i), role, adminLine)
	s.Pool = pool
	s.Tags[drivers.TagPool] = pool
	return s
}

// TestConformance runs the shared driver contract against the stateful
// fake: three managers and a worker created at once, found by tag, not
// duplicated, destroyed; then Teardown leaves nothing of the cluster.
func TestConformance(t *testing.T) {
	b := azuretest.New()
	d := testDriver(t, b, allowed)
	cluster := drivertest.ClusterID(t)
	ms := []drivers.MachineSpec{spec(t, cluster, "manager", 1), spec(t, cluster, "manager", 2), spec(t, cluster, "manager", 3), spec(t, cluster, "worker", 1)}
	drivertest.Run(t, d, drivertest.Config{Cluster: cluster, Machines: ms, SkipSSH: true, Timeout: time.Minute})
	if err := d.Teardown(testCtx(t), cluster); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if left := b.Owned(cluster); len(left) > 0 {
		t.Errorf("left after destroy and teardown: %v", left)
	}
	if n := b.Count(); n != 0 {
		t.Errorf("%d resources left in the backend", n)
	}
}

// TestCreateDetails checks what one Create asks Azure for: tags, zones
// spread, the admin key with password login off, custom data carrying the
// host key, the OS disk, the image, the NSG's rules; then power states,
// restarting a deallocated VM, NSG convergence, and what Destroy removes.
func TestCreateDetails(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, `allowed_cidrs = ["198.51.100.7/32", "2001:db8::/64"]
pool_os_disk_type = { manager = "Premium_LRS" }
vm_size = "Standard_D2s_v5"`)
	rg := "provision-" + cluster
	want := []drivers.MachineSpec{spec(t, cluster, "manager", 1), spec(t, cluster, "manager", 2), spec(t, cluster, "worker", 1)}
	want[0].DiskGiB = 64
	want[2].Size = "Standard_B2s"
	for i := range want {
		want[i].Metrics = &drivers.MetricsAccess{Port: 9323, CIDRs: []string{"192.0.2.0/24", "2001:db8:1::/48"}}
	}
	if err := d.Preflight(ctx, want); err != nil {
		t.Fatalf("Preflight: %v", err)
	}
	got := make([]drivers.Machine, len(want))
	for i, w := range want {
		m, err := d.Create(ctx, cluster, w)
		if err != nil {
			t.Fatalf("Create %s: %v", w.Name, err)
		}
		got[i] = m
	}
	for i, w := range want {
		vm, custom := b.VM(rg, w.Name)
		if vm == nil {
			t.Fatalf("%s not in the backend", w.Name)
		}
		p := vm.Properties
		if z := []string{"1", "2", "1"}[i]; len(vm.Zones) != 1 || *vm.Zones[0] != z || got[i].Tags[TagZone] != z {
			t.Errorf("%s: zones %v (tag %q), want %s", w.Name, vm.Zones, got[i].Tags[TagZone], z)
		}
		for k, v := range map[string]string{drivers.TagCluster: cluster, drivers.TagMachine: w.Name, drivers.TagRole: w.Role, drivers.TagPool: w.Pool,
			TagUser: "provision", TagHostKey: w.HostKey.Public} {
			if deref(vm.Tags[k]) != v {
				t.Errorf("%s: tag %s = %q, want %q", w.Name, k, deref(vm.Tags[k]), v)
			}
		}
		lc := p.OSProfile.LinuxConfiguration
		if !deref(lc.DisablePasswordAuthentication) || deref(p.OSProfile.AdminUsername) != "provision" || p.OSProfile.AdminPassword != nil ||
			len(lc.SSH.PublicKeys) != 1 || deref(lc.SSH.PublicKeys[0].KeyData) != strings.TrimSpace(adminLine) ||
			deref(lc.SSH.PublicKeys[0].Path) != "/home/provision/.ssh/authorized_keys" {
			t.Errorf("%s: os profile %+v %+v", w.Name, p.OSProfile, lc.SSH.PublicKeys[0])
		}
		// The custom data is the cloud-init user-data with the host key
		// whose public half is pinned.
		if !strings.HasPrefix(custom, "#cloud-config") || !strings.Contains(custom, "provision") {
			t.Errorf("%s: custom data is not the cloud-init user-data:\n%s", w.Name, custom)
		}
		if pub := hostKeyIn(t, custom); pub != w.HostKey.Public || got[i].SSH.HostKey != pub {
			t.Errorf("%s: host key in custom data %q, spec %q, pinned %q", w.Name, pub, w.HostKey.Public, got[i].SSH.HostKey)
		}
		od := p.StorageProfile.OSDisk
		wantDisk, wantType := 30, "StandardSSD_LRS"
		if i == 0 {
			wantDisk = 64
		}
		if w.Pool == "manager" {
			wantType = "Premium_LRS"
		}
		if deref(od.DiskSizeGB) != int32(wantDisk) || string(deref(od.ManagedDisk.StorageAccountType)) != wantType ||
			deref(od.DeleteOption) != armcompute.DiskDeleteOptionTypesDelete || deref(od.Name) != w.Name+"-osdisk" {
			t.Errorf("%s: os disk %+v %+v", w.Name, od, od.ManagedDisk)
		}
		wantSize := "Standard_D2s_v5"
		if i == 2 {
			wantSize = "Standard_B2s"
		}
		if string(deref(p.HardwareProfile.VMSize)) != wantSize {
			t.Errorf("%s: size %s", w.Name, deref(p.HardwareProfile.VMSize))
		}
		if img := p.StorageProfile.ImageReference; deref(img.Publisher) != "Debian" || deref(img.Offer) != "debian-12" || deref(img.SKU) != "12-gen2" || deref(img.Version) != "latest" {
			t.Errorf("%s: image %+v", w.Name, img)
		}
		if !strings.HasPrefix(got[i].Address, "203.0.113.") || !strings.HasPrefix(got[i].PrivateAddress, "10.42.0.") || got[i].State != "running" {
			t.Errorf("%s: machine %+v", w.Name, got[i])
		}
	}
	if slices.Contains(b.Owned(cluster), "disk c-manager-1-osdisk") == false {
		t.Errorf("os disk not tagged: %v", b.Owned(cluster))
	}

	// The NSG: SSH and 2376 from the allowed CIDRs (IPv4 and IPv6 apart),
	// swarm ports from the subnet, the rest of the VNet denied.
	nsg := b.NSG(rg, nsgName(cluster))
	rules := map[string]string{}
	for _, r := range nsg.Properties.SecurityRules {
		rules[deref(r.Name)] = ruleKey(r)
	}
	for name, want := range map[string]string{
		"provision-operator":         "provision-operator|100|Inbound|Allow|Tcp|198.51.100.7/32|*|*|22,2376",
		"provision-operator-v6":      "provision-operator-v6|101|Inbound|Allow|Tcp|2001:db8::/64|*|*|22,2376",
		"provision-swarm-tcp":        "provision-swarm-tcp|200|Inbound|Allow|Tcp|10.42.0.0/24|*|10.42.0.0/24|2377,7946",
		"provision-swarm-udp":        "provision-swarm-udp|201|Inbound|Allow|Udp|10.42.0.0/24|*|10.42.0.0/24|4789,7946",
		"provision-swarm-esp":        "provision-swarm-esp|202|Inbound|Allow|Esp|10.42.0.0/24|*|10.42.0.0/24|*",
		"provision-metrics":          "provision-metrics|210|Inbound|Allow|Tcp|10.42.0.0/24|*|10.42.0.0/24|9323",
		"provision-metrics-cidrs":    "provision-metrics-cidrs|211|Inbound|Allow|Tcp|192.0.2.0/24|*|*|9323",
		"provision-metrics-cidrs-v6": "provision-metrics-cidrs-v6|212|Inbound|Allow|Tcp|2001:db8:1::/48|*|*|9323",
		"provision-deny-vnet":        "provision-deny-vnet|4000|Inbound|Deny|*|VirtualNetwork|*|*|*",
	} {
		if rules[name] != want {
			t.Errorf("nsg rule %s:\n got  %s\n want %s", name, rules[name], want)
		}
	}
	if len(rules) != 9 {
		t.Errorf("nsg rules: %v", rules)
	}

	// Machines: power states from the instance view.
	b.SetPower(rg, "c-worker-1", "deallocated")
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 3 {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	if ms[2].Name != "c-worker-1" || ms[2].State != "deallocated" || ms[0].State != "running" || ms[2].Address != got[2].Address {
		t.Errorf("Machines: %+v", ms)
	}
	// Create on a deallocated VM starts it.
	m, err := d.Create(ctx, cluster, want[2])
	if err != nil || m.ID != got[2].ID || m.State != "running" {
		t.Errorf("Create on a deallocated vm: %v %+v", err, m)
	}
	if n := b.Calls("VirtualMachinesClient.BeginStart"); n != 1 {
		t.Errorf("BeginStart called %d times", n)
	}

	// Allowed CIDRs changed: the next process converges the rules, the
	// old address loses access.
	d2 := testDriver(t, b, `allowed_cidrs = ["192.0.2.0/24"]
vm_size = "Standard_D2s_v5"`)
	if _, err := d2.Create(ctx, cluster, spec(t, cluster, "worker", 2)); err != nil {
		t.Fatal(err)
	}
	nsg = b.NSG(rg, nsgName(cluster))
	var keys []string
	for _, r := range nsg.Properties.SecurityRules {
		keys = append(keys, ruleKey(r))
	}
	if !slices.Contains(keys, "provision-operator|100|Inbound|Allow|Tcp|192.0.2.0/24|*|*|22,2376") || strings.Contains(strings.Join(keys, " "), "198.51.100.7") ||
		strings.Contains(strings.Join(keys, " "), "2001:db8") {
		t.Errorf("rules after allowed_cidrs changed: %v", keys)
	}

	// Destroy: the VM, its NIC, IP and disk go; a second Destroy succeeds.
	if err := d.Destroy(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, got[0]); err != nil {
		t.Fatalf("second Destroy: %v", err)
	}
	for _, r := range b.Owned(cluster) {
		if strings.Contains(r, "c-manager-1") {
			t.Errorf("left after Destroy: %s", r)
		}
	}
	// Teardown refuses while VMs exist.
	if err := d.Teardown(ctx, cluster); err == nil || !strings.Contains(err.Error(), "vms still exist") {
		t.Errorf("Teardown with vms: %v", err)
	}
	for _, m := range []drivers.Machine{got[1], got[2]} {
		if err := d.Destroy(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Destroy(ctx, drivers.Machine{Name: "c-worker-2", Tags: map[string]string{drivers.TagCluster: cluster}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if left := b.Owned(cluster); len(left) > 0 || b.Count() != 0 {
		t.Errorf("left: %v (%d)", left, b.Count())
	}
}

// hostKeyIn returns the authorized_keys form of the ed25519 host key in
// the user-data.
func hostKeyIn(t *testing.T, ud string) string {
	t.Helper()
	begin := strings.Index(ud, "-----BEGIN OPENSSH PRIVATE KEY-----")
	const endMark = "-----END OPENSSH PRIVATE KEY-----"
	end := strings.Index(ud, endMark)
	if begin < 0 || end < begin {
		t.Fatalf("no host key in the user-data")
	}
	var pem strings.Builder
	for _, l := range strings.Split(ud[begin:end+len(endMark)], "\n") {
		pem.WriteString(strings.TrimSpace(l) + "\n")
	}
	signer, err := ssh.ParsePrivateKey([]byte(pem.String()))
	if err != nil {
		t.Fatalf("host key in the user-data: %v", err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
}

// swap is a transport a test can change after the clients were made.
type swap struct {
	mu  sync.Mutex
	cur policy.Transporter
}

func (s *swap) Do(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	return cur.Do(req)
}

func setTransport(d *Driver, t policy.Transporter) {
	s := d.transport.(*swap)
	s.mu.Lock()
	s.cur = t
	s.mu.Unlock()
}

// apiTransport wraps the backend's transport to change answers of one API.
type apiTransport struct {
	next policy.Transporter
	do   func(api string, req *http.Request, next policy.Transporter) (*http.Response, error)
}

func (a apiTransport) Do(req *http.Request) (*http.Response, error) {
	api, _ := req.Context().Value(runtime.CtxAPINameKey{}).(string)
	return a.do(api, req, a.next)
}

// lostAnswer is a transport failure the SDK must not retry blindly (the
// request may have gone through).
type lostAnswer struct{}

func (lostAnswer) Error() string { return "connection lost after the VM create was sent" }
func (lostAnswer) NonRetriable() {}

// TestInterruptedCreateIsAdopted: the VM create goes through but its answer
// never reaches the driver. The VM carries its tags from the create call
// itself, so listing finds it, and Create with the same name, from this
// driver or a fresh one, returns it instead of making a second one.
func TestInterruptedCreateIsAdopted(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, allowed)
	setTransport(d, apiTransport{next: b.Transport(), do: func(api string, req *http.Request, next policy.Transporter) (*http.Response, error) {
		resp, err := next.Do(req)
		if err == nil && api == "VirtualMachinesClient.BeginCreateOrUpdate" && req.Method == http.MethodPut {
			return nil, lostAnswer{}
		}
		return resp, err
	}})
	want := spec(t, cluster, "worker", 1)
	if _, err := d.Create(ctx, cluster, want); !errors.As(err, new(lostAnswer)) {
		t.Fatalf("Create with the answer lost: %v", err)
	}
	if n := b.Calls("VirtualMachinesClient.BeginCreateOrUpdate"); n != 1 {
		t.Fatalf("VM create sent %d times, want 1", n)
	}
	// A new process: listing by tags finds it with everything needed to reach it.
	d2 := testDriver(t, b, allowed)
	ms, err := d2.Machines(ctx, cluster)
	if err != nil || len(ms) != 1 {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	m := ms[0]
	if m.Name != want.Name || m.SSH.HostKey != want.HostKey.Public || m.SSH.User != "provision" || m.Address == "" ||
		m.Tags[drivers.TagRole] != "worker" || m.State != "running" {
		t.Errorf("listed %+v", m)
	}
	setTransport(d, b.Transport())
	for i, drv := range []*Driver{d2, d} {
		adopted := want
		adopted.HostKey.PrivatePEM = nil // the engine adopts with the pinned public key only
		got, err := drv.Create(ctx, cluster, adopted)
		if err != nil || got.ID != m.ID || got.SSH.HostKey != want.HostKey.Public {
			t.Errorf("Create again (%d): %v %+v, want %s", i, err, got, m.ID)
		}
	}
	if n := b.Calls("VirtualMachinesClient.BeginCreateOrUpdate"); n != 1 {
		t.Errorf("VM create sent %d times after adoption, want 1", n)
	}
	// Destroy by tags alone (an interrupted create recorded no ID).
	if err := d2.Destroy(ctx, drivers.Machine{Name: want.Name, Tags: map[string]string{drivers.TagCluster: cluster}}); err != nil {
		t.Fatal(err)
	}
	if err := d2.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if left := b.Owned(cluster); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

// TestFailedLongRunningOperation: Azure accepts the VM but its allocation
// fails (the operation ends Failed, the VM stays in state Failed). Create
// says why; the listing shows the VM failed; the next Create deletes it and
// makes it again.
func TestFailedLongRunningOperation(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	fail := atomic.Bool{}
	fail.Store(true)
	b.Fault = func(api, rg, name string) azuretest.FaultResult {
		if api == "VirtualMachinesClient.BeginCreateOrUpdate" && fail.Load() {
			return azuretest.FaultResult{Code: "AllocationFailed", Status: http.StatusOK, InLRO: true}
		}
		return azuretest.FaultResult{}
	}
	d := testDriver(t, b, allowed)
	want := spec(t, cluster, "manager", 1)
	_, err := d.Create(ctx, cluster, want)
	if err == nil || !isCode(err, "AllocationFailed") || !strings.Contains(err.Error(), "no capacity") {
		t.Fatalf("Create with a failing allocation: %v", err)
	}
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 1 || ms[0].State != "failed" {
		t.Fatalf("Machines after the failure: %v %+v", err, ms)
	}
	fail.Store(false)
	m, err := d.Create(ctx, cluster, want)
	if err != nil || m.State != "running" {
		t.Fatalf("Create after the failure: %v %+v", err, m)
	}
	vm, _ := b.VM("provision-"+cluster, want.Name)
	if deref(vm.Properties.ProvisioningState) != "Succeeded" || b.Calls("VirtualMachinesClient.BeginCreateOrUpdate") != 2 || b.Calls("VirtualMachinesClient.BeginDelete") != 1 {
		t.Errorf("vm %s, creates %d, deletes %d", deref(vm.Properties.ProvisioningState),
			b.Calls("VirtualMachinesClient.BeginCreateOrUpdate"), b.Calls("VirtualMachinesClient.BeginDelete"))
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if left := b.Owned(cluster); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

// statusAnswer is what Azure's front ends answer when throttling (429) or
// failing (5xx): a response, which the SDK retries.
func statusAnswer(req *http.Request, status int, code string) *http.Response {
	return &http.Response{
		StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"X-Ms-Error-Code": {code}, "Content-Type": {"application/json"}},
		Body:    io.NopCloser(bytes.NewReader(fmt.Appendf(nil, `{"error":{"code":%q,"message":"injected by the test"}}`, code))),
		Request: req,
	}
}

// TestThrottlingAndServerErrorsRetried: 429 and 5xx answers (the fake's own
// error responders are not retriable, so the transport is wrapped) are
// retried by the SDK until the call goes through; a throttle that never ends
// is reported as such.
func TestThrottlingAndServerErrorsRetried(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, allowed)
	var mu sync.Mutex
	injected := map[string]int{}
	setTransport(d, apiTransport{next: b.Transport(), do: func(api string, req *http.Request, next policy.Transporter) (*http.Response, error) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case api == "VirtualMachinesClient.BeginCreateOrUpdate" && req.Method == http.MethodPut && injected["429"] < 2:
			injected["429"]++
			return statusAnswer(req, http.StatusTooManyRequests, "TooManyRequests"), nil
		case api == "InterfacesClient.BeginCreateOrUpdate" && req.Method == http.MethodPut && injected["503"] < 2:
			injected["503"]++
			return statusAnswer(req, http.StatusServiceUnavailable, "ServiceUnavailable"), nil
		case api == "VirtualNetworksClient.Get" && injected["500"] < 1:
			injected["500"]++
			return statusAnswer(req, http.StatusInternalServerError, "InternalServerError"), nil
		}
		return next.Do(req)
	}})
	m, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1))
	if err != nil {
		t.Fatalf("Create through 429 and 5xx answers: %v", err)
	}
	if injected["429"] != 2 || injected["503"] != 2 || injected["500"] != 1 {
		t.Errorf("injected %v", injected)
	}
	if n := b.Calls("VirtualMachinesClient.BeginCreateOrUpdate"); n != 1 {
		t.Errorf("the backend saw %d VM creates, want 1", n)
	}

	// Throttled for good: the SDK gives up after its retries, the error says so.
	setTransport(d, apiTransport{next: b.Transport(), do: func(api string, req *http.Request, next policy.Transporter) (*http.Response, error) {
		if api == "VirtualMachinesClient.BeginDelete" {
			return statusAnswer(req, http.StatusTooManyRequests, "TooManyRequests"), nil
		}
		return next.Do(req)
	}})
	if err := d.Destroy(ctx, m); err == nil || !strings.Contains(err.Error(), "kept throttling") {
		t.Errorf("Destroy under endless throttling: %v", err)
	}
	setTransport(d, b.Transport())
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
}

// TestPreflight: a spec Azure can satisfy passes; every problem it cannot
// is reported, together, with nothing created.
func TestPreflight(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	ok := []drivers.MachineSpec{spec(t, cluster, "manager", 1), spec(t, cluster, "worker", 1)}
	if err := testDriver(t, b, allowed).Preflight(ctx, ok); err != nil {
		t.Fatalf("Preflight: %v", err)
	}

	bad := []drivers.MachineSpec{spec(t, cluster, "manager", 1), spec(t, cluster, "worker", 1), spec(t, cluster, "big", 1)}
	bad[1].Size = "Standard_Nope"
	bad[2].Size = "Standard_D64s_v5"
	err := testDriver(t, b, allowed+`
image = "Debian:debian-13:13-gen2:latest"
pool_os_disk_type = { manager = "Premium_LRS" }
resource_group = "missing-rg"`).Preflight(ctx, bad)
	for _, want := range []string{
		`VM size "Standard_Nope" is not offered in westeurope`,
		"image Debian:debian-13:13-gen2:latest not found in westeurope",
		`resource group "missing-rg" (resource_group in the driver block) does not exist`,
		`pool "manager": VM size Standard_B2s does not support Premium_LRS disks`,
		"the machines need 64 vCPUs of family standardDSv5Family, its quota in westeurope leaves 18",
		"the machines need 66 vCPUs, the regional quota of westeurope leaves 37",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Preflight error lacks %q:\n%v", want, err)
		}
	}

	// An unknown location: the SKU listing is empty.
	d := testDriver(t, b, allowed)
	d.cfg.Location = "nowhere"
	if err := d.Preflight(ctx, ok); err == nil || !strings.Contains(err.Error(), `location "nowhere" offers no VM sizes`) {
		t.Errorf("unknown location: %v", err)
	}
	// No credentials: said, with what could not be checked.
	d = testDriver(t, b, allowed)
	d.cred.(*azfake.TokenCredential).SetError(errors.New("DefaultAzureCredential: failed to acquire a token"))
	if err := d.Preflight(ctx, ok); err == nil || !strings.Contains(err.Error(), "no usable Azure credentials") || !strings.Contains(err.Error(), "not checked") {
		t.Errorf("no credentials: %v", err)
	}
	if b.Count() != 0 {
		t.Errorf("preflight created %d resources", b.Count())
	}
}

// TestReservedAdminUser: an admin user name Azure refuses for a VM
// ("admin", Debian's cloud image user elsewhere) is reported by preflight and
// refused by Create before the public IP and NIC are made.
func TestReservedAdminUser(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	want := spec(t, cluster, "manager", 1)
	want.SSH.User = "admin"
	d := testDriver(t, b, allowed)
	if err := d.Preflight(ctx, []drivers.MachineSpec{want}); err == nil || !strings.Contains(err.Error(), `admin user "admin"`) {
		t.Errorf("Preflight: %v", err)
	}
	if _, err := d.Create(ctx, cluster, want); err == nil || !strings.Contains(err.Error(), `admin user "admin"`) {
		t.Errorf("Create: %v", err)
	}
	if b.Count() != 0 {
		t.Errorf("%d resources made: %v", b.Count(), b.Owned(cluster))
	}
}

// TestResources: what plan lists, before, during and for destroy, and
// without credentials.
func TestResources(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	want := []drivers.MachineSpec{spec(t, cluster, "manager", 1), spec(t, cluster, "manager", 2), spec(t, cluster, "manager", 3), spec(t, cluster, "worker", 1)}
	d := testDriver(t, b, allowed)

	show := func(rs []drivers.Resource) string {
		var lines []string
		for _, r := range rs {
			lines = append(lines, fmt.Sprintf("%s %s %s %s", r.Action, r.Kind, r.Name, r.Note))
		}
		return strings.Join(lines, "\n")
	}
	rs, err := d.Resources(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	out := show(rs)
	for _, line := range []string{
		"create resource-group provision-" + cluster,
		"create virtual-network provision-" + cluster + "-vnet 10.42.0.0/16, subnet swarm 10.42.0.0/24",
		"create network-security-group provision-" + cluster + "-nsg 22 and 2376 from 198.51.100.7/32; swarm ports from 10.42.0.0/24 only",
		"create public-ip c-manager-2-ip Standard, static, zone 2",
		"keep availability-zones westeurope managers: c-manager-1 zone 1, c-manager-2 zone 2, c-manager-3 zone 3",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("resources lack %q:\n%s", line, out)
		}
	}
	if _, err := d.Create(ctx, cluster, want[0]); err != nil {
		t.Fatal(err)
	}
	out2, err := d.Resources(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"keep resource-group", "keep virtual-network", "keep network-security-group", "keep public-ip c-manager-1-ip 203.0.113.", "create public-ip c-manager-2-ip"} {
		if !strings.Contains(show(out2), line) {
			t.Errorf("resources after a create lack %q:\n%s", line, show(out2))
		}
	}
	// Destroy: only what exists, and no zones line.
	gone, err := d.Resources(ctx, cluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := show(gone); strings.Contains(s, "create") || strings.Contains(s, "availability-zones") || len(gone) != 4 {
		t.Errorf("resources for destroy:\n%s", s)
	}
	// No credentials: what would be made, and the error saying so.
	d2 := testDriver(t, b, allowed)
	d2.cred.(*azfake.TokenCredential).SetError(errors.New("no credential"))
	rs, err = d2.Resources(ctx, cluster, want)
	if err == nil || !strings.Contains(err.Error(), "not checked") || len(rs) != 3+4+1 ||
		!strings.Contains(show(rs), "managers and workers spread over the zones westeurope offers for each size (not checked without credentials)") {
		t.Errorf("without credentials: %v\n%s", err, show(rs))
	}
}

// TestTeardownGroupHoldingForeignResources: the driver's own group holds a
// disk someone else put there: Teardown names it and deletes nothing; once
// it is gone, the group goes.
func TestTeardownGroupHoldingForeignResources(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, allowed)
	m, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	rg := "provision-" + cluster
	b.AddDisk(rg, "someones-data")
	err = d.Teardown(ctx, cluster)
	if err == nil || !strings.Contains(err.Error(), "Microsoft.Compute/disks someones-data") {
		t.Fatalf("Teardown with a foreign disk: %v", err)
	}
	if !slices.Contains(b.Owned(cluster), "resource-group "+rg) {
		t.Fatal("the group was deleted with a foreign disk in it")
	}
	b.RemoveDisk(rg, "someones-data")
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if left := b.Owned(cluster); len(left) > 0 || b.Count() != 0 {
		t.Errorf("left: %v", left)
	}
}

// TestExistingResourceGroup: with resource_group set, the driver works in
// that group, and Teardown removes only what it made there.
func TestExistingResourceGroup(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, allowed+"\nresource_group = \"ops-swarm\"")
	if _, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1)); err == nil || !strings.Contains(err.Error(), `resource group "ops-swarm"`) {
		t.Fatalf("Create without the named group: %v", err)
	}
	b.AddGroup("ops-swarm", map[string]string{"team": "ops"})
	b.AddDisk("ops-swarm", "team-disk")
	m, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m.ID, "/resourceGroups/ops-swarm/") {
		t.Errorf("vm id %s", m.ID)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if left := b.Owned(cluster); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
	if b.Count() != 2 { // the group and the team's disk
		t.Errorf("backend holds %d resources, want the group and its disk", b.Count())
	}
}

// TestForeignNamesakesInNamedGroup: in a resource group the spec names,
// a public IP or NIC someone else made under the name the driver would give
// a machine's is neither taken over (its tags rewritten by the PUT) nor, as a
// result, deleted with the machine: Create stops, naming it, and changes
// nothing.
func TestForeignNamesakesInNamedGroup(t *testing.T) {
	for _, kind := range []string{"public ip", "network interface"} {
		t.Run(strings.ReplaceAll(kind, " ", "-"), func(t *testing.T) {
			b := azuretest.New()
			ctx := testCtx(t)
			cluster := drivertest.ClusterID(t)
			d := testDriver(t, b, allowed+"\nresource_group = \"ops-swarm\"")
			b.AddGroup("ops-swarm", map[string]string{"team": "ops"})
			want := spec(t, cluster, "manager", 1)
			other := map[string]string{"team": "ops"}
			if kind == "public ip" {
				b.AddPublicIP("ops-swarm", pipName(want.Name), other)
			} else {
				b.AddNIC("ops-swarm", nicName(want.Name), other)
			}
			_, err := d.Create(ctx, cluster, want)
			if err == nil || !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), drivers.TagCluster) {
				t.Fatalf("Create beside a foreign %s: %v", kind, err)
			}
			if kind == "public ip" {
				if ip := b.PublicIP("ops-swarm", pipName(want.Name)); ip == nil || deref(ip.Tags["team"]) != "ops" || ip.Tags[drivers.TagCluster] != nil {
					t.Fatalf("the foreign public ip was changed: %+v", ip)
				}
			}
			if vm, _ := b.VM("ops-swarm", want.Name); vm != nil {
				t.Fatal("a vm was made")
			}
			// Destroy (what apply does with a failed create) leaves it too.
			if err := d.Destroy(ctx, drivers.Machine{Name: want.Name, Tags: want.Tags}); err == nil {
				t.Logf("destroy: ok")
			}
			if err := d.Teardown(ctx, cluster); err != nil {
				t.Fatal(err)
			}
			if n := b.Count(); n != 2 {
				t.Errorf("backend holds %d resources, want the group and the foreign %s", n, kind)
			}
		})
	}
}

// TestForeignUntaggedDiskKept: an untagged empty disk someone made in the
// named group under the name a machine's OS disk would get is not deleted
// by that machine's Destroy (only an untagged disk a VM create made from its
// image is taken for a leftover).
func TestForeignUntaggedDiskKept(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, allowed+"\nresource_group = \"ops-swarm\"")
	b.AddGroup("ops-swarm", nil)
	want := spec(t, cluster, "manager", 1)
	b.AddDisk("ops-swarm", diskName(want.Name))
	err := d.Destroy(ctx, drivers.Machine{Name: want.Name, Tags: want.Tags})
	if err == nil || !strings.Contains(err.Error(), "not deleting it") {
		t.Errorf("Destroy: %v", err)
	}
	if b.Count() != 2 {
		t.Errorf("backend holds %d resources, want the group and the disk", b.Count())
	}
}

// TestNoSubscription: without a subscription nothing is contacted, not even
// the credential chain (plan without any Azure setup stays offline).
func TestNoSubscription(t *testing.T) {
	t.Setenv("AZURE_SUBSCRIPTION_ID", "")
	f, _ := hclparse.NewParser().ParseHCL([]byte("location = \"westeurope\"\n"+allowed), "azure.hcl")
	dr, diags := New(f.Body, drivers.Options{Log: slog.New(slog.DiscardHandler)})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	d := dr.(*Driver)
	cred := &azfake.TokenCredential{}
	cred.SetError(errors.New("the credential must not be asked"))
	d.cred = cred
	_, err := d.Machines(context.Background(), "x")
	if err == nil || !strings.Contains(err.Error(), "no Azure subscription") || !strings.Contains(err.Error(), "not checked") {
		t.Errorf("Machines: %v", err)
	}
}

// TestAdoptWaitsForProvisioning: a VM an interrupted apply left still
// creating is waited for (bounded), then adopted, not created again.
func TestAdoptWaitsForProvisioning(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, allowed)
	want := spec(t, cluster, "manager", 1)
	m, err := d.Create(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	rg := "provision-" + cluster
	b.SetProvisioning(rg, want.Name, "Creating")
	d.pollEvery = 10 * time.Millisecond
	var finished atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(50 * time.Millisecond)
		finished.Store(true) // before: Create can only see Succeeded after it
		b.SetProvisioning(rg, want.Name, "Succeeded")
	}()
	got, err := d.Create(ctx, cluster, want)
	returnedAfter := finished.Load()
	<-done
	if err != nil || got.ID != m.ID {
		t.Fatalf("Create on a creating vm: %v %+v", err, got)
	}
	if !returnedAfter {
		t.Error("Create returned while the vm was still creating")
	}
	if n := b.Calls("VirtualMachinesClient.BeginCreateOrUpdate"); n != 1 {
		t.Errorf("VM creates: %d", n)
	}
}

// TestGenerationsCoexist: a replaced machine's next generation is a second
// VM of the same machine name ("<name>-g2" with its own NIC, public IP and
// OS disk, host name and machine tag unchanged, same zone), found, adopted
// and destroyed by name and generation without touching the first; both
// sit in the load balancer's pool while they coexist; the first
// generation's names and tags are as before generations.
func TestGenerationsCoexist(t *testing.T) {
	b := azuretest.New()
	d := testDriver(t, b, allowed)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	rg := d.resourceGroup(cluster)

	g1 := spec(t, cluster, "manager", 2)
	g1.Generation = 1
	g1.Tags[drivers.TagGeneration] = "1" // what apply sends a Coexist driver
	name := g1.Name
	m1, err := d.Create(ctx, cluster, g1)
	if err != nil {
		t.Fatal(err)
	}
	vm1, _ := b.VM(rg, name)
	if vm1 == nil || vm1.Tags[drivers.TagGeneration] != nil || drivers.GenerationOf(m1.Tags) != 1 || m1.Name != name ||
		deref(vm1.Properties.StorageProfile.OSDisk.Name) != name+"-osdisk" {
		t.Fatalf("generation 1: %+v (vm %+v)", m1, vm1)
	}

	g2 := g1
	g2.Generation = 2
	g2.Tags = maps.Clone(g1.Tags)
	g2.Tags[drivers.TagGeneration] = "2"
	m2, err := d.Create(ctx, cluster, g2)
	if err != nil {
		t.Fatal(err)
	}
	if m1.ID == m2.ID || m2.Name != name || drivers.GenerationOf(m2.Tags) != 2 || m2.Tags[drivers.TagMachine] != name ||
		m2.Zone != m1.Zone || m2.Zone != "2" || m2.Address == m1.Address || m2.PrivateAddress == m1.PrivateAddress {
		t.Fatalf("generation 2 %+v, generation 1 %+v", m2, m1)
	}
	vm2, _ := b.VM(rg, name+"-g2")
	if vm2 == nil {
		t.Fatalf("no vm %s-g2 in the backend: %v", name, b.Owned(cluster))
	}
	if p := vm2.Properties; deref(p.OSProfile.ComputerName) != name || deref(p.StorageProfile.OSDisk.Name) != name+"-g2-osdisk" ||
		deref(vm2.Tags[drivers.TagGeneration]) != "2" || deref(vm2.Tags[drivers.TagMachine]) != name {
		t.Errorf("generation 2 vm: host name %q, disk %q, tags %v", deref(p.OSProfile.ComputerName), deref(p.StorageProfile.OSDisk.Name), tagMap(vm2.Tags))
	}
	gen1 := []string{"disk " + name + "-osdisk", "nic " + name + "-nic", "public-ip " + name + "-ip", "vm " + name}
	gen2 := []string{"disk " + name + "-g2-osdisk", "nic " + name + "-g2-nic", "public-ip " + name + "-g2-ip", "vm " + name + "-g2"}
	owned := b.Owned(cluster)
	for _, r := range append(slices.Clone(gen1), gen2...) {
		if !slices.Contains(owned, r) {
			t.Errorf("%s missing: %v", r, owned)
		}
	}

	// Create is idempotent per generation.
	if again, err := d.Create(ctx, cluster, g2); err != nil || again.ID != m2.ID {
		t.Fatalf("Create of generation 2 again: %v %s (want %s)", err, again.ID, m2.ID)
	}
	if again, err := d.Create(ctx, cluster, g1); err != nil || again.ID != m1.ID {
		t.Fatalf("Create of generation 1 again: %v %s (want %s)", err, again.ID, m1.ID)
	}
	ms, err := d.Machines(ctx, cluster)
	if err != nil || len(ms) != 2 || ms[0].ID != m1.ID || ms[1].ID != m2.ID || ms[0].Name != name || ms[1].Name != name ||
		drivers.GenerationOf(ms[1].Tags) != 2 || ms[1].Tags[drivers.TagGeneration] != "2" {
		t.Fatalf("Machines: %v %+v", err, ms)
	}
	if p, err := d.Placement(ctx, cluster, []drivers.MachineSpec{g1}); err != nil || p.Machines[name] != "2" {
		t.Errorf("Placement: %+v %v", p, err)
	}
	// Both generations' NICs serve behind the balancer while they coexist.
	if st, err := d.SyncPorts(ctx, cluster, published(nil, 80)); err != nil || st.Targets != 2 {
		t.Fatalf("SyncPorts with two generations: %+v %v", st, err)
	}

	// Destroy generation 1 by tags alone (no ID): generation 2 stays whole.
	if err := d.Destroy(ctx, drivers.Machine{Name: name, Tags: map[string]string{drivers.TagCluster: cluster, drivers.TagGeneration: "1"}}); err != nil {
		t.Fatal(err)
	}
	owned = b.Owned(cluster)
	for _, r := range gen1 {
		if slices.Contains(owned, r) {
			t.Errorf("%s left after destroying generation 1: %v", r, owned)
		}
	}
	for _, r := range gen2 {
		if !slices.Contains(owned, r) {
			t.Errorf("%s gone with generation 1: %v", r, owned)
		}
	}
	ms, err = d.Machines(ctx, cluster)
	if err != nil || len(ms) != 1 || ms[0].ID != m2.ID || ms[0].Name != name || ms[0].State != "running" {
		t.Fatalf("after destroying generation 1: %v %+v (generation 2 is %s)", err, ms, m2.ID)
	}
	if st, err := d.SyncPorts(ctx, cluster, published(nil, 80)); err != nil || st.Targets != 1 {
		t.Fatalf("SyncPorts after generation 1 left: %+v %v", st, err)
	}
	// Plan sees the machine's address in generation 2's.
	rs, err := d.Resources(ctx, cluster, []drivers.MachineSpec{g1})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Kind == "public-ip" && r.Action == drivers.ResourceCreate {
			t.Errorf("plan would create %s though %s-g2-ip serves the machine", r.Name, name)
		}
	}

	// A generation whose VM name Azure would refuse (Linux: 64 characters)
	// is refused by Preflight and Create before anything is made.
	long := g2
	long.Name = strings.Repeat("c", 63-len("-manager-2")) + "-manager-2"
	long.Tags = maps.Clone(g2.Tags)
	long.Tags[drivers.TagMachine] = long.Name
	before := b.Owned(cluster)
	if err := d.Preflight(ctx, []drivers.MachineSpec{long}); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Errorf("Preflight of a 66-character vm name: %v", err)
	}
	if _, err := d.Create(ctx, cluster, long); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Errorf("Create of a 66-character vm name: %v", err)
	}
	if now := b.Owned(cluster); !slices.Equal(now, before) {
		t.Errorf("a refused create made %v", now)
	}

	// Generation 2 by tags alone too; then nothing of the cluster is left.
	if err := d.RemoveBalancer(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, drivers.Machine{Name: name, Tags: map[string]string{drivers.TagCluster: cluster, drivers.TagGeneration: "2"}}); err != nil {
		t.Fatal(err)
	}
	if ms, err := d.Machines(ctx, cluster); err != nil || len(ms) != 0 {
		t.Fatalf("after destroying generation 2: %v %+v", err, ms)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if n := b.Count(); n != 0 {
		t.Errorf("%d resources left in the backend: %v", n, b.Owned(cluster))
	}
}

// TestPrivateOnly: public_ip = false makes no public IP; the machine is
// reached at its private address (through the bastion when there is one).
func TestPrivateOnly(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, `allowed_cidrs = ["198.51.100.7/32"]
public_ip = false
bastion {
  address  = "203.0.113.1"
  user     = "jump"
  host_key = "`+adminLine+`"
}`)
	m, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1))
	if err != nil {
		t.Fatal(err)
	}
	if n := b.Calls("PublicIPAddressesClient.BeginCreateOrUpdate"); n != 0 {
		t.Errorf("%d public IPs made with public_ip = false", n)
	}
	if !strings.HasPrefix(m.Address, "10.42.0.") || m.Address != m.PrivateAddress || m.SSH.Bastion == nil || m.SSH.Bastion.Address != "203.0.113.1" {
		t.Errorf("machine %+v (bastion %+v): want its private address, through the bastion", m, m.SSH.Bastion)
	}
	for _, r := range b.Owned(cluster) {
		if strings.HasPrefix(r, "public-ip") || strings.Contains(r, "-ip") {
			t.Errorf("owned resource %s", r)
		}
	}
}

// TestDockerDisk: a pool's docker_disk is an empty managed disk at LUN 0 of
// that size, tagged with the cluster and deleted with the VM; the machine
// names the path the guest sees it at, also when adopted; without it no
// data disk is made. Destroy and teardown leave nothing.
func TestDockerDisk(t *testing.T) {
	b := azuretest.New()
	d := testDriver(t, b, allowed)
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	rg := d.resourceGroup(cluster)
	want := spec(t, cluster, "worker", 1)
	want.DockerDiskGiB = 16
	m, err := d.Create(ctx, cluster, want)
	if err != nil {
		t.Fatal(err)
	}
	vm, _ := b.VM(rg, want.Name)
	dds := vm.Properties.StorageProfile.DataDisks
	if len(dds) != 1 || deref(dds[0].Lun) != 0 || deref(dds[0].DiskSizeGB) != 16 || deref(dds[0].CreateOption) != armcompute.DiskCreateOptionTypesEmpty ||
		deref(dds[0].DeleteOption) != armcompute.DiskDeleteOptionTypesDelete || deref(dds[0].Name) != want.Name+"-docker" {
		t.Fatalf("data disks %+v", dds)
	}
	if m.DockerDisk != "/dev/disk/azure/scsi1/lun0" {
		t.Fatalf("docker disk path %q", m.DockerDisk)
	}
	if !slices.Contains(b.Owned(cluster), "disk "+want.Name+"-docker") {
		t.Errorf("data disk not tagged: %v", b.Owned(cluster))
	}
	again, err := testDriver(t, b, allowed).Create(ctx, cluster, want)
	if err != nil || again.ID != m.ID || again.DockerDisk != m.DockerDisk {
		t.Fatalf("adopted: %v %s %q", err, again.ID, again.DockerDisk)
	}
	plain := spec(t, cluster, "worker", 2)
	m2, err := d.Create(ctx, cluster, plain)
	if err != nil {
		t.Fatal(err)
	}
	if vm2, _ := b.VM(rg, plain.Name); len(vm2.Properties.StorageProfile.DataDisks) != 0 || m2.DockerDisk != "" {
		t.Fatalf("without docker_disk: %+v %q", vm2.Properties.StorageProfile.DataDisks, m2.DockerDisk)
	}
	if err := d.Destroy(ctx, m); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(b.Owned(cluster), "disk "+want.Name+"-docker") {
		t.Fatalf("data disk left after destroy: %v", b.Owned(cluster))
	}
	if err := d.Destroy(ctx, m2); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx, cluster); err != nil {
		t.Fatal(err)
	}
	if n := b.Count(); n != 0 {
		t.Fatalf("%d resources left: %v", n, b.Owned(cluster))
	}
}

// TestSharedNetworkInAnotherLocation: the cluster's virtual network and
// security group exist in the location of its first apply; a driver block
// (a second alias, or a changed location) in another one is told so by name
// instead of meeting Azure's refusal of a NIC whose subnet is elsewhere.
func TestSharedNetworkInAnotherLocation(t *testing.T) {
	b := azuretest.New()
	ctx := testCtx(t)
	cluster := drivertest.ClusterID(t)
	d := testDriver(t, b, allowed)
	if _, err := d.Create(ctx, cluster, spec(t, cluster, "manager", 1)); err != nil {
		t.Fatal(err)
	}
	other := testDriver(t, b, allowed)
	other.cfg.Location = "northeurope"
	cli, err := other.clients(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.ensureVNet(ctx, cli, cluster); err == nil || !strings.Contains(err.Error(), "is in westeurope, this driver block's location is northeurope") {
		t.Errorf("ensureVNet: %v", err)
	}
	if _, err := other.ensureNSG(ctx, cli, cluster, []string{"198.51.100.7/32"}, nil); err == nil || !strings.Contains(err.Error(), "is in westeurope") {
		t.Errorf("ensureNSG: %v", err)
	}
}
