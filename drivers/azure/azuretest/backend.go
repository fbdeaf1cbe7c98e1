// Package azuretest is a small stateful Azure Resource Manager built on the
// SDK's own fake servers (armcompute/fake, armnetwork/fake,
// armresources/fake). Those answer each call with whatever their handler
// functions return and keep nothing; Backend is the handlers plus the state:
// resource groups, virtual networks, NSGs, public IPs, NICs, VMs and disks
// appear when created, are listed by group, refuse deletion while in use, and
// disappear with their group, as Azure's do.
//
// The driver's tests plug Transport into the SDK clients (in process);
// Handler serves the same backend over HTTPS for the provision binary, with
// the Microsoft Entra ID token endpoints an azidentity client-secret
// credential needs, so that the binary runs its production code paths end to
// end against 127.0.0.1. The provision binary does not import this package.
package azuretest

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v6"
	computefake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v6/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"
	networkfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"
	resourcesfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources/fake"
)

// Defaults of a new Backend.
const (
	Subscription = "00000000-0000-0000-0000-00000000a2e0"
	Location     = "westeurope"
	// DebianImage is the default image's URN, which the backend offers.
	DebianImage = "Debian:debian-12:12-gen2"
)

// Fault lets a test change one answer. It is called (without the
// backend's lock held) for every mutating call with the SDK's API name
// ("VirtualMachinesClient.BeginCreateOrUpdate"), the resource group and the
// resource's name. A non-empty Code fails the call: at once with that HTTP
// status, or, with InLRO, as the long-running operation's terminal state
// after the resource was recorded in provisioning state Failed (as Azure
// does when a VM cannot be allocated).
type Fault func(api, rg, name string) (f FaultResult)

// FaultResult is what a Fault asks for.
type FaultResult struct {
	Code   string
	Status int
	InLRO  bool
}

// Backend is the stateful fake. Its fields may be changed before use; the
// state is read through its methods.
type Backend struct {
	Subscription string
	Location     string
	Zones        []string // of every VM size; nil: a region without zones
	SKUs         []*armcompute.ResourceSKU
	Images       map[string][]string // "publisher:offer:sku" (lower case) -> versions
	Usages       []*armcompute.Usage
	// LROPolls is how many "in progress" answers every long-running
	// operation gives before its result (default 1), so pollers poll.
	LROPolls int
	Fault    Fault

	mu     sync.Mutex
	groups map[string]*armresources.ResourceGroup
	vnets  map[string]*armnetwork.VirtualNetwork
	nsgs   map[string]*armnetwork.SecurityGroup
	pips   map[string]*armnetwork.PublicIPAddress
	nics   map[string]*armnetwork.Interface
	lbs    map[string]*armnetwork.LoadBalancer // lb.go
	vms    map[string]*armcompute.VirtualMachine
	power  map[string]string // vm key -> "running", "deallocated"
	custom map[string]string // vm key -> custom data (Azure never returns it)
	disks  map[string]*armcompute.Disk
	nextIP int
	calls  map[string]int
	// failing: request path (lower case) of an operation that is to fail
	// asynchronously; ops: its operation ID -> the fault.
	failing map[string]FaultResult
	ops     map[string]FaultResult

	transportOnce sync.Once
	transport     *Transport
}

// New returns a backend for Subscription in Location with three zones, a
// few VM sizes (Standard_B2s, Standard_B1s, Standard_D2s_v5, and
// Standard_D64s_v5 which exceeds the quota), the Debian 12 image and
// ample quotas.
func New() *Backend {
	b := &Backend{
		Subscription: Subscription,
		Location:     Location,
		Zones:        []string{"1", "2", "3"},
		Images:       map[string][]string{strings.ToLower(DebianImage): {"0.20250101.1", "0.20250301.2"}},
		LROPolls:     1,
	}
	b.SKUs = []*armcompute.ResourceSKU{
		b.VMSize("Standard_B1s", "standardBSFamily", 1, false),
		b.VMSize("Standard_B2s", "standardBSFamily", 2, false),
		b.VMSize("Standard_D2s_v5", "standardDSv5Family", 2, true),
		b.VMSize("Standard_D64s_v5", "standardDSv5Family", 64, true),
	}
	b.Usages = []*armcompute.Usage{
		usage("cores", 3, 40),
		usage("standardBSFamily", 0, 20),
		usage("standardDSv5Family", 2, 20),
	}
	return b
}

// VMSize describes a VM size offered in the backend's location and zones.
func (b *Backend) VMSize(name, family string, vcpus int, premium bool) *armcompute.ResourceSKU {
	var zones []*string
	for _, z := range b.Zones {
		zones = append(zones, to(z))
	}
	return &armcompute.ResourceSKU{
		ResourceType: to("virtualMachines"),
		Name:         to(name),
		Family:       to(family),
		Locations:    []*string{to(b.Location)},
		LocationInfo: []*armcompute.ResourceSKULocationInfo{{Location: to(b.Location), Zones: zones}},
		Capabilities: []*armcompute.ResourceSKUCapabilities{
			{Name: to("vCPUs"), Value: to(fmt.Sprint(vcpus))},
			{Name: to("PremiumIO"), Value: to(fmt.Sprint(premium))},
			{Name: to("HyperVGenerations"), Value: to("V1,V2")},
			{Name: to("CpuArchitectureType"), Value: to("x64")},
		},
	}
}

func usage(name string, current int32, limit int64) *armcompute.Usage {
	return &armcompute.Usage{Name: &armcompute.UsageName{Value: to(name)}, CurrentValue: to(current), Limit: to(limit), Unit: to("Count")}
}

func to[T any](v T) *T { return &v }

func val[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func key(rg, name string) string { return strings.ToLower(rg + "/" + name) }

func (b *Backend) init() {
	if b.groups == nil {
		b.groups = map[string]*armresources.ResourceGroup{}
		b.vnets = map[string]*armnetwork.VirtualNetwork{}
		b.nsgs = map[string]*armnetwork.SecurityGroup{}
		b.pips = map[string]*armnetwork.PublicIPAddress{}
		b.nics = map[string]*armnetwork.Interface{}
		b.lbs = map[string]*armnetwork.LoadBalancer{}
		b.vms = map[string]*armcompute.VirtualMachine{}
		b.power = map[string]string{}
		b.custom = map[string]string{}
		b.disks = map[string]*armcompute.Disk{}
		b.calls = map[string]int{}
		b.failing = map[string]FaultResult{}
		b.ops = map[string]FaultResult{}
	}
}

// id builds a resource ID in the backend's subscription.
func (b *Backend) id(rg, provider, typ, name string) string {
	if provider == "" {
		return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s", b.Subscription, rg)
	}
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/%s/%s/%s", b.Subscription, rg, provider, typ, name)
}

// idKey returns the group/name key of a resource ID ("" when it is not one).
var idRe = regexp.MustCompile(`(?i)^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/[^/]+/[^/]+/([^/]+)`)

func idKey(id string) string {
	m := idRe.FindStringSubmatch(id)
	if m == nil {
		return ""
	}
	return key(m[1], m[2])
}

// fault runs the test's Fault for a mutating call.
func (b *Backend) fault(api, rg, name string) FaultResult {
	b.mu.Lock()
	b.init()
	b.calls[api]++
	f := b.Fault
	b.mu.Unlock()
	if f == nil {
		return FaultResult{}
	}
	return f(api, rg, name)
}

// Calls says how often a mutating API was called.
func (b *Backend) Calls(api string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	return b.calls[api]
}

// lro answers a long-running operation: LROPolls "in progress" answers
// (with status inProgress), then the result.
func lro[T any](b *Backend, inProgress, done int, res T) azfake.PollerResponder[T] {
	var p azfake.PollerResponder[T]
	for range b.LROPolls {
		p.AddNonTerminalResponse(inProgress, nil)
	}
	p.SetTerminalResponse(done, res, nil)
	return p
}

func errResp(status int, code string) azfake.ErrorResponder {
	var e azfake.ErrorResponder
	e.SetResponseError(status, code)
	return e
}

func notFound(what string) azfake.ErrorResponder {
	return errResp(http.StatusNotFound, what)
}

// groupErr is the answer when the resource group does not exist ("" when it does).
func (b *Backend) groupMissing(rg string) bool {
	_, ok := b.groups[strings.ToLower(rg)]
	return !ok
}

// Transport carries the SDK clients' requests to the backend in process.
func (b *Backend) Transport() policy.Transporter {
	b.transportOnce.Do(func() { b.transport = b.newTransport() })
	return b.transport
}

// Transport dispatches each request, by the SDK client that sent it, to the
// fake server of its module. Requests are served one at a time: the fake
// servers track pagers and pollers by URL path, and two listings of one
// path at once would share a pager.
type Transport struct {
	b         *Backend
	mu        sync.Mutex
	compute   policy.Transporter
	network   policy.Transporter
	resources policy.Transporter
}

var computeClients = map[string]bool{"VirtualMachinesClient": true, "DisksClient": true, "ResourceSKUsClient": true, "VirtualMachineImagesClient": true, "UsageClient": true}
var networkClients = map[string]bool{"VirtualNetworksClient": true, "SecurityGroupsClient": true, "PublicIPAddressesClient": true, "InterfacesClient": true, "SubnetsClient": true, "LoadBalancersClient": true}

// Do implements policy.Transporter.
func (t *Transport) Do(req *http.Request) (*http.Response, error) {
	api, _ := req.Context().Value(runtime.CtxAPINameKey{}).(string)
	client, _, _ := strings.Cut(api, ".")
	if strings.HasPrefix(req.URL.Path, operationsPath) {
		return t.b.operation(req)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if strings.Contains(api, ".NewList") {
		if m := groupPathRe.FindStringSubmatch(req.URL.Path); m != nil && t.b.missing(m[1]) {
			// The fake servers' pagers keep a failed listing's tracker
			// (the next listing of the path would find it empty), so a
			// missing group is answered here.
			return statusResponse(req, http.StatusNotFound, "ResourceGroupNotFound"), nil
		}
	}
	var (
		resp *http.Response
		err  error
	)
	switch {
	case computeClients[client]:
		resp, err = t.compute.Do(req)
	case networkClients[client]:
		resp, err = t.network.Do(req)
	default:
		resp, err = t.resources.Do(req)
	}
	if err == nil {
		t.b.asyncFailure(req, resp)
	}
	return resp, err
}

var groupPathRe = regexp.MustCompile(`(?i)^/subscriptions/[^/]+/resourceGroups/([^/]+)`)

func (b *Backend) missing(rg string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	return b.groupMissing(rg)
}

// statusResponse is an error answer as Resource Manager gives it.
func statusResponse(req *http.Request, status int, code string) *http.Response {
	body := fmt.Sprintf(`{"error":{"code":%q,"message":"azuretest: %s"}}`, code, code)
	return &http.Response{
		StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/json"}, "X-Ms-Error-Code": {code}},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)), Request: req,
	}
}

// operationsPath is where the operations that fail asynchronously are
// polled.
const operationsPath = "/azuretest/operations/"

// asyncFailure turns the answer to a request whose operation is to fail
// into what Resource Manager answers for a long-running operation: 201
// with an Azure-AsyncOperation URL to poll (and not the fake servers' own
// polling protocol, whose failures leave the fake's tracker stuck).
func (b *Backend) asyncFailure(req *http.Request, resp *http.Response) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	p := strings.ToLower(req.URL.Path)
	f, ok := b.failing[p]
	if !ok {
		return
	}
	delete(b.failing, p)
	id := fmt.Sprintf("op-%d", len(b.ops)+1)
	b.ops[id] = f
	resp.Header.Del("Fake-Poller-Status")
	resp.Header.Set("Azure-AsyncOperation", "https://"+req.URL.Host+operationsPath+id)
	resp.StatusCode, resp.Status = http.StatusCreated, "201 Created"
	body := []byte(`{"properties":{"provisioningState":"Creating"}}`)
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Type", "application/json")
}

// operation answers the poll of an operation that fails.
func (b *Backend) operation(req *http.Request) (*http.Response, error) {
	b.mu.Lock()
	f, ok := b.ops[strings.TrimPrefix(req.URL.Path, operationsPath)]
	b.mu.Unlock()
	status, body := http.StatusOK, fmt.Sprintf(`{"status":"Failed","error":{"code":%q,"message":"azuretest: the operation failed with %s"}}`, f.Code, f.Code)
	if !ok {
		status, body = http.StatusNotFound, `{"error":{"code":"NotFound","message":"no such operation"}}`
	}
	return &http.Response{
		StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)), Request: req,
	}, nil
}

func (b *Backend) newTransport() *Transport {
	return &Transport{
		b: b,
		compute: computefake.NewServerFactoryTransport(&computefake.ServerFactory{
			VirtualMachinesServer: computefake.VirtualMachinesServer{
				BeginCreateOrUpdate: b.vmCreate,
				Get:                 b.vmGet,
				BeginDelete:         b.vmDelete,
				BeginStart:          b.vmStart,
				NewListPager:        b.vmList,
				NewListAllPager:     b.vmListAll,
			},
			DisksServer: computefake.DisksServer{
				Get:                         b.diskGet,
				BeginUpdate:                 b.diskUpdate,
				BeginDelete:                 b.diskDelete,
				NewListByResourceGroupPager: b.diskList,
			},
			ResourceSKUsServer:         computefake.ResourceSKUsServer{NewListPager: b.skuList},
			VirtualMachineImagesServer: computefake.VirtualMachineImagesServer{List: b.imageList, Get: b.imageGet},
			UsageServer:                computefake.UsageServer{NewListPager: b.usageList},
		}),
		network: networkfake.NewServerFactoryTransport(&networkfake.ServerFactory{
			VirtualNetworksServer: networkfake.VirtualNetworksServer{BeginCreateOrUpdate: b.vnetCreate, Get: b.vnetGet, BeginDelete: b.vnetDelete},
			SecurityGroupsServer:  networkfake.SecurityGroupsServer{BeginCreateOrUpdate: b.nsgCreate, Get: b.nsgGet, BeginDelete: b.nsgDelete},
			PublicIPAddressesServer: networkfake.PublicIPAddressesServer{
				BeginCreateOrUpdate: b.pipCreate, Get: b.pipGet, BeginDelete: b.pipDelete, NewListPager: b.pipList,
			},
			InterfacesServer: networkfake.InterfacesServer{
				BeginCreateOrUpdate: b.nicCreate, Get: b.nicGet, BeginDelete: b.nicDelete, NewListPager: b.nicList,
			},
			LoadBalancersServer: networkfake.LoadBalancersServer{BeginCreateOrUpdate: b.lbCreate, Get: b.lbGet, BeginDelete: b.lbDelete},
		}),
		resources: resourcesfake.NewServerFactoryTransport(&resourcesfake.ServerFactory{
			ResourceGroupsServer: resourcesfake.ResourceGroupsServer{CreateOrUpdate: b.groupCreate, Get: b.groupGet, BeginDelete: b.groupDelete},
			Server:               resourcesfake.Server{NewListByResourceGroupPager: b.resourceList},
		}),
	}
}

// ---- resource groups

func (b *Backend) groupCreate(ctx context.Context, rg string, p armresources.ResourceGroup, _ *armresources.ResourceGroupsClientCreateOrUpdateOptions) (resp azfake.Responder[armresources.ResourceGroupsClientCreateOrUpdateResponse], e azfake.ErrorResponder) {
	if f := b.fault("ResourceGroupsClient.CreateOrUpdate", rg, rg); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	status := http.StatusOK
	if b.groupMissing(rg) {
		status = http.StatusCreated
	}
	g := &armresources.ResourceGroup{
		ID: to(b.id(rg, "", "", "")), Name: to(rg), Location: p.Location, Tags: p.Tags, Type: to("Microsoft.Resources/resourceGroups"),
		Properties: &armresources.ResourceGroupProperties{ProvisioningState: to("Succeeded")},
	}
	b.groups[strings.ToLower(rg)] = g
	resp.SetResponse(status, armresources.ResourceGroupsClientCreateOrUpdateResponse{ResourceGroup: *g}, nil)
	return resp, e
}

func (b *Backend) groupGet(ctx context.Context, rg string, _ *armresources.ResourceGroupsClientGetOptions) (resp azfake.Responder[armresources.ResourceGroupsClientGetResponse], e azfake.ErrorResponder) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	g, ok := b.groups[strings.ToLower(rg)]
	if !ok {
		return resp, notFound("ResourceGroupNotFound")
	}
	resp.SetResponse(http.StatusOK, armresources.ResourceGroupsClientGetResponse{ResourceGroup: *g}, nil)
	return resp, e
}

func (b *Backend) groupDelete(ctx context.Context, rg string, _ *armresources.ResourceGroupsClientBeginDeleteOptions) (resp azfake.PollerResponder[armresources.ResourceGroupsClientDeleteResponse], e azfake.ErrorResponder) {
	if f := b.fault("ResourceGroupsClient.BeginDelete", rg, rg); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.groupMissing(rg) {
		return resp, notFound("ResourceGroupNotFound")
	}
	prefix := strings.ToLower(rg) + "/"
	for _, m := range []map[string]string{b.power, b.custom} {
		for k := range m {
			if strings.HasPrefix(k, prefix) {
				delete(m, k)
			}
		}
	}
	deletePrefix(b.vms, prefix)
	deletePrefix(b.disks, prefix)
	deletePrefix(b.nics, prefix)
	deletePrefix(b.lbs, prefix)
	deletePrefix(b.pips, prefix)
	deletePrefix(b.nsgs, prefix)
	deletePrefix(b.vnets, prefix)
	delete(b.groups, strings.ToLower(rg))
	return lro(b, http.StatusAccepted, http.StatusOK, armresources.ResourceGroupsClientDeleteResponse{}), e
}

func deletePrefix[T any](m map[string]*T, prefix string) {
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			delete(m, k)
		}
	}
}

func (b *Backend) resourceList(rg string, _ *armresources.ClientListByResourceGroupOptions) (resp azfake.PagerResponder[armresources.ClientListByResourceGroupResponse]) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	// (A missing group is answered by the Transport: an error page would
	// leave the fake's pager tracker stuck on this path.)
	var out []*armresources.GenericResourceExpanded
	add := func(id, name, typ *string, tags map[string]*string) {
		out = append(out, &armresources.GenericResourceExpanded{ID: id, Name: name, Type: typ, Tags: tags, Location: to(b.Location)})
	}
	prefix := strings.ToLower(rg) + "/"
	for k, v := range b.vnets {
		if strings.HasPrefix(k, prefix) {
			add(v.ID, v.Name, v.Type, v.Tags)
		}
	}
	for k, v := range b.nsgs {
		if strings.HasPrefix(k, prefix) {
			add(v.ID, v.Name, v.Type, v.Tags)
		}
	}
	for k, v := range b.pips {
		if strings.HasPrefix(k, prefix) {
			add(v.ID, v.Name, v.Type, v.Tags)
		}
	}
	for k, v := range b.nics {
		if strings.HasPrefix(k, prefix) {
			add(v.ID, v.Name, v.Type, v.Tags)
		}
	}
	for k, v := range b.vms {
		if strings.HasPrefix(k, prefix) {
			add(v.ID, v.Name, v.Type, v.Tags)
		}
	}
	for k, v := range b.disks {
		if strings.HasPrefix(k, prefix) {
			add(v.ID, v.Name, v.Type, v.Tags)
		}
	}
	for k, v := range b.lbs {
		if strings.HasPrefix(k, prefix) {
			add(v.ID, v.Name, v.Type, v.Tags)
		}
	}
	sort.Slice(out, func(i, j int) bool { return val(out[i].ID) < val(out[j].ID) })
	resp.AddPage(http.StatusOK, armresources.ClientListByResourceGroupResponse{ResourceListResult: armresources.ResourceListResult{Value: out}}, nil)
	return resp
}

// ---- virtual networks

func (b *Backend) vnetCreate(ctx context.Context, rg, name string, p armnetwork.VirtualNetwork, _ *armnetwork.VirtualNetworksClientBeginCreateOrUpdateOptions) (resp azfake.PollerResponder[armnetwork.VirtualNetworksClientCreateOrUpdateResponse], e azfake.ErrorResponder) {
	if f := b.fault("VirtualNetworksClient.BeginCreateOrUpdate", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.groupMissing(rg) {
		return resp, notFound("ResourceGroupNotFound")
	}
	v := p
	v.ID = to(b.id(rg, "Microsoft.Network", "virtualNetworks", name))
	v.Name, v.Type = to(name), to("Microsoft.Network/virtualNetworks")
	if v.Properties != nil {
		props := *v.Properties
		props.ProvisioningState = to(armnetwork.ProvisioningStateSucceeded)
		var subnets []*armnetwork.Subnet
		for _, s := range props.Subnets {
			sn := *s
			sn.ID = to(val(v.ID) + "/subnets/" + val(s.Name))
			subnets = append(subnets, &sn)
		}
		props.Subnets = subnets
		v.Properties = &props
	}
	b.vnets[key(rg, name)] = &v
	return lro(b, http.StatusCreated, http.StatusOK, armnetwork.VirtualNetworksClientCreateOrUpdateResponse{VirtualNetwork: v}), e
}

func (b *Backend) vnetGet(ctx context.Context, rg, name string, _ *armnetwork.VirtualNetworksClientGetOptions) (resp azfake.Responder[armnetwork.VirtualNetworksClientGetResponse], e azfake.ErrorResponder) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	v, ok := b.vnets[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	resp.SetResponse(http.StatusOK, armnetwork.VirtualNetworksClientGetResponse{VirtualNetwork: *v}, nil)
	return resp, e
}

func (b *Backend) vnetDelete(ctx context.Context, rg, name string, _ *armnetwork.VirtualNetworksClientBeginDeleteOptions) (resp azfake.PollerResponder[armnetwork.VirtualNetworksClientDeleteResponse], e azfake.ErrorResponder) {
	if f := b.fault("VirtualNetworksClient.BeginDelete", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.vnets[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	for _, n := range b.nics {
		for _, c := range n.Properties.IPConfigurations {
			if c.Properties != nil && c.Properties.Subnet != nil && strings.HasPrefix(strings.ToLower(val(c.Properties.Subnet.ID)), strings.ToLower(val(v.ID))+"/") {
				return resp, errResp(http.StatusBadRequest, "InUseSubnetCannotBeDeleted")
			}
		}
	}
	delete(b.vnets, key(rg, name))
	return lro(b, http.StatusAccepted, http.StatusOK, armnetwork.VirtualNetworksClientDeleteResponse{}), e
}

// ---- network security groups

func (b *Backend) nsgCreate(ctx context.Context, rg, name string, p armnetwork.SecurityGroup, _ *armnetwork.SecurityGroupsClientBeginCreateOrUpdateOptions) (resp azfake.PollerResponder[armnetwork.SecurityGroupsClientCreateOrUpdateResponse], e azfake.ErrorResponder) {
	if f := b.fault("SecurityGroupsClient.BeginCreateOrUpdate", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.groupMissing(rg) {
		return resp, notFound("ResourceGroupNotFound")
	}
	g := p
	g.ID = to(b.id(rg, "Microsoft.Network", "networkSecurityGroups", name))
	g.Name, g.Type = to(name), to("Microsoft.Network/networkSecurityGroups")
	if g.Properties != nil {
		props := *g.Properties
		props.ProvisioningState = to(armnetwork.ProvisioningStateSucceeded)
		g.Properties = &props
	}
	b.nsgs[key(rg, name)] = &g
	return lro(b, http.StatusCreated, http.StatusOK, armnetwork.SecurityGroupsClientCreateOrUpdateResponse{SecurityGroup: g}), e
}

func (b *Backend) nsgGet(ctx context.Context, rg, name string, _ *armnetwork.SecurityGroupsClientGetOptions) (resp azfake.Responder[armnetwork.SecurityGroupsClientGetResponse], e azfake.ErrorResponder) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	g, ok := b.nsgs[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	resp.SetResponse(http.StatusOK, armnetwork.SecurityGroupsClientGetResponse{SecurityGroup: *g}, nil)
	return resp, e
}

func (b *Backend) nsgDelete(ctx context.Context, rg, name string, _ *armnetwork.SecurityGroupsClientBeginDeleteOptions) (resp azfake.PollerResponder[armnetwork.SecurityGroupsClientDeleteResponse], e azfake.ErrorResponder) {
	if f := b.fault("SecurityGroupsClient.BeginDelete", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	g, ok := b.nsgs[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	for _, n := range b.nics {
		if n.Properties.NetworkSecurityGroup != nil && strings.EqualFold(val(n.Properties.NetworkSecurityGroup.ID), val(g.ID)) {
			return resp, errResp(http.StatusBadRequest, "InUseNetworkSecurityGroupCannotBeDeleted")
		}
	}
	delete(b.nsgs, key(rg, name))
	return lro(b, http.StatusAccepted, http.StatusOK, armnetwork.SecurityGroupsClientDeleteResponse{}), e
}

// ---- public IPs

func (b *Backend) pipCreate(ctx context.Context, rg, name string, p armnetwork.PublicIPAddress, _ *armnetwork.PublicIPAddressesClientBeginCreateOrUpdateOptions) (resp azfake.PollerResponder[armnetwork.PublicIPAddressesClientCreateOrUpdateResponse], e azfake.ErrorResponder) {
	if f := b.fault("PublicIPAddressesClient.BeginCreateOrUpdate", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.groupMissing(rg) {
		return resp, notFound("ResourceGroupNotFound")
	}
	ip := p
	ip.ID = to(b.id(rg, "Microsoft.Network", "publicIPAddresses", name))
	ip.Name, ip.Type = to(name), to("Microsoft.Network/publicIPAddresses")
	props := armnetwork.PublicIPAddressPropertiesFormat{}
	if p.Properties != nil {
		props = *p.Properties
	}
	props.ProvisioningState = to(armnetwork.ProvisioningStateSucceeded)
	if old, ok := b.pips[key(rg, name)]; ok {
		props.IPAddress = old.Properties.IPAddress
		props.IPConfiguration = old.Properties.IPConfiguration
	} else {
		// TEST-NET-3 (RFC 5737): never a host.
		b.nextIP++
		props.IPAddress = to(fmt.Sprintf("203.0.113.%d", b.nextIP%250+1))
	}
	ip.Properties = &props
	b.pips[key(rg, name)] = &ip
	return lro(b, http.StatusCreated, http.StatusOK, armnetwork.PublicIPAddressesClientCreateOrUpdateResponse{PublicIPAddress: ip}), e
}

func (b *Backend) pipGet(ctx context.Context, rg, name string, _ *armnetwork.PublicIPAddressesClientGetOptions) (resp azfake.Responder[armnetwork.PublicIPAddressesClientGetResponse], e azfake.ErrorResponder) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	ip, ok := b.pips[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	resp.SetResponse(http.StatusOK, armnetwork.PublicIPAddressesClientGetResponse{PublicIPAddress: *ip}, nil)
	return resp, e
}

func (b *Backend) pipDelete(ctx context.Context, rg, name string, _ *armnetwork.PublicIPAddressesClientBeginDeleteOptions) (resp azfake.PollerResponder[armnetwork.PublicIPAddressesClientDeleteResponse], e azfake.ErrorResponder) {
	if f := b.fault("PublicIPAddressesClient.BeginDelete", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	ip, ok := b.pips[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	if ip.Properties.IPConfiguration != nil {
		return resp, errResp(http.StatusBadRequest, "PublicIPAddressCannotBeDeleted")
	}
	delete(b.pips, key(rg, name))
	return lro(b, http.StatusAccepted, http.StatusOK, armnetwork.PublicIPAddressesClientDeleteResponse{}), e
}

func (b *Backend) pipList(rg string, _ *armnetwork.PublicIPAddressesClientListOptions) (resp azfake.PagerResponder[armnetwork.PublicIPAddressesClientListResponse]) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	// (A missing group is answered by the Transport: an error page would
	// leave the fake's pager tracker stuck on this path.)
	resp.AddPage(http.StatusOK, armnetwork.PublicIPAddressesClientListResponse{PublicIPAddressListResult: armnetwork.PublicIPAddressListResult{Value: inGroup(b.pips, rg)}}, nil)
	return resp
}

// inGroup returns copies of the group's resources, in key order.
func inGroup[T any](m map[string]*T, rg string) []*T {
	var keys []string
	for k := range m {
		if strings.HasPrefix(k, strings.ToLower(rg)+"/") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := make([]*T, 0, len(keys))
	for _, k := range keys {
		v := *m[k]
		out = append(out, &v)
	}
	return out
}

// ---- network interfaces

func (b *Backend) nicCreate(ctx context.Context, rg, name string, p armnetwork.Interface, _ *armnetwork.InterfacesClientBeginCreateOrUpdateOptions) (resp azfake.PollerResponder[armnetwork.InterfacesClientCreateOrUpdateResponse], e azfake.ErrorResponder) {
	if f := b.fault("InterfacesClient.BeginCreateOrUpdate", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.groupMissing(rg) {
		return resp, notFound("ResourceGroupNotFound")
	}
	if p.Properties == nil || len(p.Properties.IPConfigurations) == 0 {
		return resp, errResp(http.StatusBadRequest, "InvalidRequestFormat")
	}
	n := p
	n.ID = to(b.id(rg, "Microsoft.Network", "networkInterfaces", name))
	n.Name, n.Type = to(name), to("Microsoft.Network/networkInterfaces")
	props := *p.Properties
	props.ProvisioningState = to(armnetwork.ProvisioningStateSucceeded)
	if g := props.NetworkSecurityGroup; g != nil {
		if _, ok := b.nsgs[idKey(val(g.ID))]; !ok {
			return resp, errResp(http.StatusBadRequest, "InvalidResourceReference")
		}
	}
	old := b.nics[key(rg, name)]
	var cfgs []*armnetwork.InterfaceIPConfiguration
	for i, c := range props.IPConfigurations {
		cc := *c
		if c.Properties == nil || c.Properties.Subnet == nil {
			return resp, errResp(http.StatusBadRequest, "InvalidRequestFormat")
		}
		cp := *c.Properties
		sid := strings.ToLower(val(cp.Subnet.ID))
		vnet, _, _ := strings.Cut(sid, "/subnets/")
		v, ok := b.vnets[idKey(vnet)]
		if !ok {
			return resp, errResp(http.StatusBadRequest, "InvalidResourceReference")
		}
		prefix := ""
		for _, s := range v.Properties.Subnets {
			if strings.EqualFold(val(s.ID), sid) {
				prefix = val(s.Properties.AddressPrefix)
			}
		}
		if prefix == "" {
			return resp, errResp(http.StatusBadRequest, "InvalidResourceReference")
		}
		if old != nil && i < len(old.Properties.IPConfigurations) {
			cp.PrivateIPAddress = old.Properties.IPConfigurations[i].Properties.PrivateIPAddress
		} else {
			cp.PrivateIPAddress = to(b.privateIP(prefix))
		}
		for _, pool := range cp.LoadBalancerBackendAddressPools {
			if !b.lbPoolExists(val(pool.ID)) {
				return resp, errResp(http.StatusBadRequest, "InvalidResourceReference")
			}
		}
		if cp.PublicIPAddress != nil {
			ip, ok := b.pips[idKey(val(cp.PublicIPAddress.ID))]
			if !ok {
				return resp, errResp(http.StatusBadRequest, "InvalidResourceReference")
			}
			ip.Properties.IPConfiguration = &armnetwork.IPConfiguration{ID: to(val(n.ID) + "/ipConfigurations/" + val(c.Name))}
		}
		cc.Properties = &cp
		cc.ID = to(val(n.ID) + "/ipConfigurations/" + val(c.Name))
		cfgs = append(cfgs, &cc)
	}
	props.IPConfigurations = cfgs
	if old != nil {
		props.VirtualMachine = old.Properties.VirtualMachine
	}
	n.Properties = &props
	b.nics[key(rg, name)] = &n
	return lro(b, http.StatusCreated, http.StatusOK, armnetwork.InterfacesClientCreateOrUpdateResponse{Interface: n}), e
}

// privateIP hands out the next address of the subnet (Azure keeps the first
// four).
func (b *Backend) privateIP(prefix string) string {
	base, _, _ := strings.Cut(prefix, "/")
	parts := strings.Split(base, ".")
	used := map[string]bool{}
	for _, n := range b.nics {
		for _, c := range n.Properties.IPConfigurations {
			used[val(c.Properties.PrivateIPAddress)] = true
		}
	}
	for i := 4; i < 255; i++ {
		a := fmt.Sprintf("%s.%s.%s.%d", parts[0], parts[1], parts[2], i)
		if !used[a] {
			return a
		}
	}
	return ""
}

func (b *Backend) nicGet(ctx context.Context, rg, name string, _ *armnetwork.InterfacesClientGetOptions) (resp azfake.Responder[armnetwork.InterfacesClientGetResponse], e azfake.ErrorResponder) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	n, ok := b.nics[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	resp.SetResponse(http.StatusOK, armnetwork.InterfacesClientGetResponse{Interface: *n}, nil)
	return resp, e
}

func (b *Backend) nicDelete(ctx context.Context, rg, name string, _ *armnetwork.InterfacesClientBeginDeleteOptions) (resp azfake.PollerResponder[armnetwork.InterfacesClientDeleteResponse], e azfake.ErrorResponder) {
	if f := b.fault("InterfacesClient.BeginDelete", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	n, ok := b.nics[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	if n.Properties.VirtualMachine != nil {
		return resp, errResp(http.StatusBadRequest, "NicInUse")
	}
	b.releaseNIC(n)
	delete(b.nics, key(rg, name))
	return lro(b, http.StatusAccepted, http.StatusOK, armnetwork.InterfacesClientDeleteResponse{}), e
}

// releaseNIC frees the public IPs the NIC holds.
func (b *Backend) releaseNIC(n *armnetwork.Interface) {
	for _, c := range n.Properties.IPConfigurations {
		if c.Properties.PublicIPAddress != nil {
			if ip, ok := b.pips[idKey(val(c.Properties.PublicIPAddress.ID))]; ok {
				ip.Properties.IPConfiguration = nil
			}
		}
	}
}

func (b *Backend) nicList(rg string, _ *armnetwork.InterfacesClientListOptions) (resp azfake.PagerResponder[armnetwork.InterfacesClientListResponse]) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	// (A missing group is answered by the Transport: an error page would
	// leave the fake's pager tracker stuck on this path.)
	resp.AddPage(http.StatusOK, armnetwork.InterfacesClientListResponse{InterfaceListResult: armnetwork.InterfaceListResult{Value: inGroup(b.nics, rg)}}, nil)
	return resp
}

// ---- virtual machines

func (b *Backend) vmCreate(ctx context.Context, rg, name string, p armcompute.VirtualMachine, _ *armcompute.VirtualMachinesClientBeginCreateOrUpdateOptions) (resp azfake.PollerResponder[armcompute.VirtualMachinesClientCreateOrUpdateResponse], e azfake.ErrorResponder) {
	f := b.fault("VirtualMachinesClient.BeginCreateOrUpdate", rg, name)
	if f.Code != "" && !f.InLRO {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.groupMissing(rg) {
		return resp, notFound("ResourceGroupNotFound")
	}
	props := p.Properties
	if props == nil || props.HardwareProfile == nil || props.StorageProfile == nil || props.OSProfile == nil || props.NetworkProfile == nil {
		return resp, errResp(http.StatusBadRequest, "InvalidParameter")
	}
	size := string(val(props.HardwareProfile.VMSize))
	known := false
	for _, s := range b.SKUs {
		known = known || strings.EqualFold(val(s.Name), size)
	}
	if !known {
		return resp, errResp(http.StatusConflict, "SkuNotAvailable")
	}
	img := props.StorageProfile.ImageReference
	if img == nil || len(b.Images[strings.ToLower(val(img.Publisher)+":"+val(img.Offer)+":"+val(img.SKU))]) == 0 {
		return resp, errResp(http.StatusNotFound, "PlatformImageNotFound")
	}
	for _, z := range p.Zones {
		ok := false
		for _, have := range b.Zones {
			ok = ok || have == val(z)
		}
		if !ok {
			return resp, errResp(http.StatusBadRequest, "InvalidParameter")
		}
	}
	if lp := props.OSProfile.LinuxConfiguration; lp == nil || !val(lp.DisablePasswordAuthentication) || lp.SSH == nil || len(lp.SSH.PublicKeys) == 0 {
		return resp, errResp(http.StatusBadRequest, "InvalidParameter")
	}
	id := b.id(rg, "Microsoft.Compute", "virtualMachines", name)
	var nics []*armnetwork.Interface
	for _, r := range props.NetworkProfile.NetworkInterfaces {
		n, ok := b.nics[idKey(val(r.ID))]
		if !ok {
			return resp, errResp(http.StatusBadRequest, "InvalidResourceReference")
		}
		if n.Properties.VirtualMachine != nil && !strings.EqualFold(val(n.Properties.VirtualMachine.ID), id) {
			return resp, errResp(http.StatusConflict, "NicInUse")
		}
		nics = append(nics, n)
	}
	for _, n := range nics {
		n.Properties.VirtualMachine = &armnetwork.SubResource{ID: to(id)}
	}
	vm := p
	vm.ID, vm.Name, vm.Type = to(id), to(name), to("Microsoft.Compute/virtualMachines")
	cp := *props
	osp := *cp.OSProfile
	b.custom[key(rg, name)] = val(osp.CustomData)
	osp.CustomData = nil // write-only, as in Azure
	cp.OSProfile = &osp
	cp.VMID = to(fmt.Sprintf("%08x-0000-4000-8000-%012x", len(b.vms)+1, time.Now().UnixNano()&0xffffffffffff))
	cp.TimeCreated = to(time.Now().UTC())
	cp.ProvisioningState = to("Succeeded")
	if f.Code != "" {
		cp.ProvisioningState = to("Failed")
	}
	vm.Properties = &cp
	b.vms[key(rg, name)] = &vm
	b.power[key(rg, name)] = "running"
	if f.Code != "" {
		b.power[key(rg, name)] = "stopped"
	}
	// The OS disk the VM makes (untagged: the create cannot tag it).
	od := cp.StorageProfile.OSDisk
	dname := name + "_OsDisk"
	if od != nil && od.Name != nil {
		dname = *od.Name
	}
	if od != nil {
		b.vmDisk(rg, dname, id, &vm, od.ManagedDisk, od.DiskSizeGB, armcompute.DiskCreateOptionFromImage)
	}
	// Data disks made empty with the VM (CreateOption Empty), untagged too.
	for _, dd := range cp.StorageProfile.DataDisks {
		if dd != nil && dd.Name != nil && val(dd.CreateOption) == armcompute.DiskCreateOptionTypesEmpty {
			b.vmDisk(rg, *dd.Name, id, &vm, dd.ManagedDisk, dd.DiskSizeGB, armcompute.DiskCreateOptionEmpty)
		}
	}
	if f.Code != "" {
		// Answered at once (the fake's poller is done with it); the
		// transport rewrites the answer into an operation that fails.
		b.failing[strings.ToLower(id)] = f
		var p azfake.PollerResponder[armcompute.VirtualMachinesClientCreateOrUpdateResponse]
		p.SetTerminalResponse(http.StatusCreated, armcompute.VirtualMachinesClientCreateOrUpdateResponse{VirtualMachine: vm}, nil)
		return p, e
	}
	return lro(b, http.StatusCreated, http.StatusOK, armcompute.VirtualMachinesClientCreateOrUpdateResponse{VirtualMachine: vm}), e
}

// vmDisk records a disk a VM create makes (untagged: the create cannot
// tag it), unless the group holds one of that name already.
func (b *Backend) vmDisk(rg, name, vmID string, vm *armcompute.VirtualMachine, md *armcompute.ManagedDiskParameters, size *int32, how armcompute.DiskCreateOption) {
	if _, ok := b.disks[key(rg, name)]; ok {
		return
	}
	sku := armcompute.DiskStorageAccountTypesStandardLRS
	if md != nil && md.StorageAccountType != nil {
		sku = armcompute.DiskStorageAccountTypes(*md.StorageAccountType)
	}
	b.disks[key(rg, name)] = &armcompute.Disk{
		ID: to(b.id(rg, "Microsoft.Compute", "disks", name)), Name: to(name), Type: to("Microsoft.Compute/disks"),
		Location: vm.Location, Zones: vm.Zones, ManagedBy: to(vmID),
		SKU: &armcompute.DiskSKU{Name: to(sku)},
		Properties: &armcompute.DiskProperties{DiskSizeGB: size, ProvisioningState: to("Succeeded"),
			CreationData: &armcompute.CreationData{CreateOption: to(how)}},
	}
}

func (b *Backend) withStatus(k string, vm armcompute.VirtualMachine) armcompute.VirtualMachine {
	p := *vm.Properties
	p.InstanceView = &armcompute.VirtualMachineInstanceView{Statuses: []*armcompute.InstanceViewStatus{
		{Code: to("ProvisioningState/" + strings.ToLower(val(p.ProvisioningState)))},
		{Code: to("PowerState/" + b.power[k])},
	}}
	vm.Properties = &p
	return vm
}

func (b *Backend) vmGet(ctx context.Context, rg, name string, o *armcompute.VirtualMachinesClientGetOptions) (resp azfake.Responder[armcompute.VirtualMachinesClientGetResponse], e azfake.ErrorResponder) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	k := key(rg, name)
	vm, ok := b.vms[k]
	if !ok {
		if b.groupMissing(rg) {
			return resp, notFound("ResourceGroupNotFound")
		}
		return resp, notFound("ResourceNotFound")
	}
	out := *vm
	if o != nil && o.Expand != nil && *o.Expand == armcompute.InstanceViewTypesInstanceView {
		out = b.withStatus(k, out)
	}
	resp.SetResponse(http.StatusOK, armcompute.VirtualMachinesClientGetResponse{VirtualMachine: out}, nil)
	return resp, e
}

func (b *Backend) vmDelete(ctx context.Context, rg, name string, _ *armcompute.VirtualMachinesClientBeginDeleteOptions) (resp azfake.PollerResponder[armcompute.VirtualMachinesClientDeleteResponse], e azfake.ErrorResponder) {
	if f := b.fault("VirtualMachinesClient.BeginDelete", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k := key(rg, name)
	vm, ok := b.vms[k]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	p := vm.Properties
	// What goes with the VM: its NICs and OS disk per their delete
	// options; the others are only released.
	for _, r := range p.NetworkProfile.NetworkInterfaces {
		nk := idKey(val(r.ID))
		n, ok := b.nics[nk]
		if !ok {
			continue
		}
		n.Properties.VirtualMachine = nil
		if r.Properties != nil && val(r.Properties.DeleteOption) == armcompute.DeleteOptionsDelete {
			b.releaseNIC(n)
			delete(b.nics, nk)
		}
	}
	if od := p.StorageProfile.OSDisk; od != nil {
		dk := key(rg, val(od.Name))
		if dk2, ok := b.disks[dk]; ok {
			dk2.ManagedBy = nil
			if val(od.DeleteOption) == armcompute.DiskDeleteOptionTypesDelete {
				delete(b.disks, dk)
			}
		}
	}
	for _, dd := range p.StorageProfile.DataDisks {
		if dd == nil {
			continue
		}
		dk := key(rg, val(dd.Name))
		if d, ok := b.disks[dk]; ok {
			d.ManagedBy = nil
			if val(dd.DeleteOption) == armcompute.DiskDeleteOptionTypesDelete {
				delete(b.disks, dk)
			}
		}
	}
	delete(b.vms, k)
	delete(b.power, k)
	delete(b.custom, k)
	return lro(b, http.StatusAccepted, http.StatusOK, armcompute.VirtualMachinesClientDeleteResponse{}), e
}

func (b *Backend) vmStart(ctx context.Context, rg, name string, _ *armcompute.VirtualMachinesClientBeginStartOptions) (resp azfake.PollerResponder[armcompute.VirtualMachinesClientStartResponse], e azfake.ErrorResponder) {
	if f := b.fault("VirtualMachinesClient.BeginStart", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	k := key(rg, name)
	if _, ok := b.vms[k]; !ok {
		return resp, notFound("ResourceNotFound")
	}
	b.power[k] = "running"
	return lro(b, http.StatusAccepted, http.StatusOK, armcompute.VirtualMachinesClientStartResponse{}), e
}

func (b *Backend) vmList(rg string, _ *armcompute.VirtualMachinesClientListOptions) (resp azfake.PagerResponder[armcompute.VirtualMachinesClientListResponse]) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	// (A missing group is answered by the Transport: an error page would
	// leave the fake's pager tracker stuck on this path.)
	resp.AddPage(http.StatusOK, armcompute.VirtualMachinesClientListResponse{VirtualMachineListResult: armcompute.VirtualMachineListResult{Value: inGroup(b.vms, rg)}}, nil)
	return resp
}

func (b *Backend) vmListAll(o *armcompute.VirtualMachinesClientListAllOptions) (resp azfake.PagerResponder[armcompute.VirtualMachinesClientListAllResponse]) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	var keys []string
	for k := range b.vms {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []*armcompute.VirtualMachine
	for _, k := range keys {
		vm := *b.vms[k]
		if o != nil && val(o.StatusOnly) == "true" {
			vm = b.withStatus(k, vm)
		}
		out = append(out, &vm)
	}
	resp.AddPage(http.StatusOK, armcompute.VirtualMachinesClientListAllResponse{VirtualMachineListResult: armcompute.VirtualMachineListResult{Value: out}}, nil)
	return resp
}

// ---- disks

func (b *Backend) diskGet(ctx context.Context, rg, name string, _ *armcompute.DisksClientGetOptions) (resp azfake.Responder[armcompute.DisksClientGetResponse], e azfake.ErrorResponder) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	d, ok := b.disks[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	resp.SetResponse(http.StatusOK, armcompute.DisksClientGetResponse{Disk: *d}, nil)
	return resp, e
}

func (b *Backend) diskUpdate(ctx context.Context, rg, name string, p armcompute.DiskUpdate, _ *armcompute.DisksClientBeginUpdateOptions) (resp azfake.PollerResponder[armcompute.DisksClientUpdateResponse], e azfake.ErrorResponder) {
	if f := b.fault("DisksClient.BeginUpdate", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	d, ok := b.disks[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	if p.Tags != nil {
		d.Tags = p.Tags
	}
	return lro(b, http.StatusAccepted, http.StatusOK, armcompute.DisksClientUpdateResponse{Disk: *d}), e
}

func (b *Backend) diskDelete(ctx context.Context, rg, name string, _ *armcompute.DisksClientBeginDeleteOptions) (resp azfake.PollerResponder[armcompute.DisksClientDeleteResponse], e azfake.ErrorResponder) {
	if f := b.fault("DisksClient.BeginDelete", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	d, ok := b.disks[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	if d.ManagedBy != nil {
		return resp, errResp(http.StatusConflict, "OperationNotAllowed")
	}
	delete(b.disks, key(rg, name))
	return lro(b, http.StatusAccepted, http.StatusOK, armcompute.DisksClientDeleteResponse{}), e
}

func (b *Backend) diskList(rg string, _ *armcompute.DisksClientListByResourceGroupOptions) (resp azfake.PagerResponder[armcompute.DisksClientListByResourceGroupResponse]) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	// (A missing group is answered by the Transport: an error page would
	// leave the fake's pager tracker stuck on this path.)
	resp.AddPage(http.StatusOK, armcompute.DisksClientListByResourceGroupResponse{DiskList: armcompute.DiskList{Value: inGroup(b.disks, rg)}}, nil)
	return resp
}

// ---- catalogue: sizes, images, quotas

var locFilterRe = regexp.MustCompile(`(?i)^location eq '([^']*)'$`)

func (b *Backend) skuList(o *armcompute.ResourceSKUsClientListOptions) (resp azfake.PagerResponder[armcompute.ResourceSKUsClientListResponse]) {
	var out []*armcompute.ResourceSKU
	loc := b.Location
	if o != nil && o.Filter != nil {
		if m := locFilterRe.FindStringSubmatch(*o.Filter); m != nil {
			loc = m[1]
		}
	}
	if strings.EqualFold(loc, b.Location) {
		out = b.SKUs
	}
	resp.AddPage(http.StatusOK, armcompute.ResourceSKUsClientListResponse{ResourceSKUsResult: armcompute.ResourceSKUsResult{Value: out}}, nil)
	return resp
}

func (b *Backend) imageList(ctx context.Context, location, publisher, offer, sku string, _ *armcompute.VirtualMachineImagesClientListOptions) (resp azfake.Responder[armcompute.VirtualMachineImagesClientListResponse], e azfake.ErrorResponder) {
	vs := b.Images[strings.ToLower(publisher+":"+offer+":"+sku)]
	if !strings.EqualFold(location, b.Location) || len(vs) == 0 {
		return resp, notFound("NotFound")
	}
	var out []*armcompute.VirtualMachineImageResource
	for _, v := range vs {
		out = append(out, &armcompute.VirtualMachineImageResource{Name: to(v), Location: to(b.Location)})
	}
	resp.SetResponse(http.StatusOK, armcompute.VirtualMachineImagesClientListResponse{VirtualMachineImageResourceArray: out}, nil)
	return resp, e
}

func (b *Backend) imageGet(ctx context.Context, location, publisher, offer, sku, version string, _ *armcompute.VirtualMachineImagesClientGetOptions) (resp azfake.Responder[armcompute.VirtualMachineImagesClientGetResponse], e azfake.ErrorResponder) {
	for _, v := range b.Images[strings.ToLower(publisher+":"+offer+":"+sku)] {
		if v == version && strings.EqualFold(location, b.Location) {
			resp.SetResponse(http.StatusOK, armcompute.VirtualMachineImagesClientGetResponse{VirtualMachineImage: armcompute.VirtualMachineImage{Name: to(v), Location: to(b.Location)}}, nil)
			return resp, e
		}
	}
	return resp, notFound("NotFound")
}

func (b *Backend) usageList(location string, _ *armcompute.UsageClientListOptions) (resp azfake.PagerResponder[armcompute.UsageClientListResponse]) {
	var out []*armcompute.Usage
	if strings.EqualFold(location, b.Location) {
		out = b.Usages
	}
	resp.AddPage(http.StatusOK, armcompute.UsageClientListResponse{ListUsagesResult: armcompute.ListUsagesResult{Value: out}}, nil)
	return resp
}

// ---- what tests read

// Owned lists every resource (by type and name) whose tags name the cluster,
// plus the resource groups named provision-<cluster>; sorted.
func (b *Backend) Owned(cluster string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	var out []string
	owned := func(tags map[string]*string) bool { return val(tags["provision-cluster"]) == cluster }
	for _, g := range b.groups {
		if owned(g.Tags) || strings.EqualFold(val(g.Name), "provision-"+cluster) {
			out = append(out, "resource-group "+val(g.Name))
		}
	}
	for _, v := range b.vnets {
		if owned(v.Tags) {
			out = append(out, "vnet "+val(v.Name))
		}
	}
	for _, v := range b.nsgs {
		if owned(v.Tags) {
			out = append(out, "nsg "+val(v.Name))
		}
	}
	for _, v := range b.pips {
		if owned(v.Tags) {
			out = append(out, "public-ip "+val(v.Name))
		}
	}
	for _, v := range b.nics {
		if owned(v.Tags) {
			out = append(out, "nic "+val(v.Name))
		}
	}
	for _, v := range b.vms {
		if owned(v.Tags) {
			out = append(out, "vm "+val(v.Name))
		}
	}
	for _, v := range b.lbs {
		if owned(v.Tags) {
			out = append(out, "load-balancer "+val(v.Name))
		}
	}
	for _, v := range b.disks {
		if owned(v.Tags) {
			out = append(out, "disk "+val(v.Name))
		}
	}
	sort.Strings(out)
	return out
}

// Count is the number of resources of every kind the backend holds.
func (b *Backend) Count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	return len(b.groups) + len(b.vnets) + len(b.nsgs) + len(b.pips) + len(b.nics) + len(b.vms) + len(b.disks) + len(b.lbs)
}

// VM returns a copy of the VM (nil when it does not exist) and the custom
// data it was created with, decoded.
func (b *Backend) VM(rg, name string) (*armcompute.VirtualMachine, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	vm, ok := b.vms[key(rg, name)]
	if !ok {
		return nil, ""
	}
	c := *vm
	ud, _ := base64.StdEncoding.DecodeString(b.custom[key(rg, name)])
	return &c, string(ud)
}

// NSG returns a copy of the network security group (nil when none).
func (b *Backend) NSG(rg, name string) *armnetwork.SecurityGroup {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	g, ok := b.nsgs[key(rg, name)]
	if !ok {
		return nil
	}
	c := *g
	return &c
}

// SetPower sets a VM's power state ("deallocated", "stopped", "running").
func (b *Backend) SetPower(rg, name, state string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	b.power[key(rg, name)] = state
}

// AddGroup makes a resource group as someone else would (no provision tags
// unless given).
func (b *Backend) AddGroup(rg string, tags map[string]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	t := map[string]*string{}
	for k, v := range tags {
		t[k] = to(v)
	}
	b.groups[strings.ToLower(rg)] = &armresources.ResourceGroup{ID: to(b.id(rg, "", "", "")), Name: to(rg), Location: to(b.Location), Tags: t,
		Type: to("Microsoft.Resources/resourceGroups"), Properties: &armresources.ResourceGroupProperties{ProvisioningState: to("Succeeded")}}
}

// AddDisk puts a disk into a group as someone else would.
func (b *Backend) AddDisk(rg, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	b.disks[key(rg, name)] = &armcompute.Disk{ID: to(b.id(rg, "Microsoft.Compute", "disks", name)), Name: to(name), Type: to("Microsoft.Compute/disks"),
		Location: to(b.Location), Properties: &armcompute.DiskProperties{DiskSizeGB: to(int32(8)),
			CreationData: &armcompute.CreationData{CreateOption: to(armcompute.DiskCreateOptionEmpty)}}}
}

// AddPublicIP puts a public IP address into a group as someone else would
// (no provision tags unless given).
func (b *Backend) AddPublicIP(rg, name string, tags map[string]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	t := map[string]*string{}
	for k, v := range tags {
		t[k] = to(v)
	}
	b.nextIP++
	b.pips[key(rg, name)] = &armnetwork.PublicIPAddress{ID: to(b.id(rg, "Microsoft.Network", "publicIPAddresses", name)), Name: to(name),
		Type: to("Microsoft.Network/publicIPAddresses"), Location: to(b.Location), Tags: t,
		Properties: &armnetwork.PublicIPAddressPropertiesFormat{IPAddress: to(fmt.Sprintf("203.0.113.%d", b.nextIP%250+1)), ProvisioningState: to(armnetwork.ProvisioningStateSucceeded)}}
}

// PublicIP returns a public IP address as the backend holds it, or nil.
func (b *Backend) PublicIP(rg, name string) *armnetwork.PublicIPAddress {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	if ip, ok := b.pips[key(rg, name)]; ok {
		c := *ip
		return &c
	}
	return nil
}

// AddNIC puts a network interface without IP configurations into a group as
// someone else would (no provision tags unless given).
func (b *Backend) AddNIC(rg, name string, tags map[string]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	t := map[string]*string{}
	for k, v := range tags {
		t[k] = to(v)
	}
	b.nics[key(rg, name)] = &armnetwork.Interface{ID: to(b.id(rg, "Microsoft.Network", "networkInterfaces", name)), Name: to(name),
		Type: to("Microsoft.Network/networkInterfaces"), Location: to(b.Location), Tags: t,
		Properties: &armnetwork.InterfacePropertiesFormat{ProvisioningState: to(armnetwork.ProvisioningStateSucceeded)}}
}

// RemoveDisk deletes a disk behind the driver's back.
func (b *Backend) RemoveDisk(rg, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	delete(b.disks, key(rg, name))
}

// SetProvisioning sets a VM's provisioning state ("Creating", "Succeeded").
func (b *Backend) SetProvisioning(rg, name, state string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	if vm, ok := b.vms[key(rg, name)]; ok {
		p := *vm.Properties
		p.ProvisioningState = to(state)
		vm.Properties = &p
	}
}
