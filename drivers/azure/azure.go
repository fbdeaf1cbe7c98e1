// Package azure is the Azure driver: it creates virtual machines through the
// official track-2 Resource Manager SDK (armcompute, armnetwork,
// armresources), tags everything it makes with the cluster ID inside the
// create call itself, and pins the SSH host key it hands to cloud-init.
//
// Credentials come from azidentity's default chain (environment variables,
// workload identity, managed identity, the Azure CLI), the subscription from
// the block or AZURE_SUBSCRIPTION_ID. Nothing is loaded and nothing is
// contacted in New: the credential and the clients are made on first use.
//
// The block (location and allowed_cidrs, or detect_operator_ip, are needed):
//
//	driver "azure" {
//	  location        = "westeurope"
//	  subscription_id = "..."                 # else AZURE_SUBSCRIPTION_ID
//	  tenant_id       = "..."                 # else the credential's own
//	  cloud           = "public"              # government | china | custom
//	  resource_manager_endpoint = "https://management.local.azurestack.external" # custom only
//	  authority_host            = "https://login.microsoftonline.com/"           # custom only
//	  resource_manager_audience = "..."       # custom only; default the endpoint
//	  resource_group  = "ops-swarm"           # an existing group; default: provision-<cluster id>, made and removed by the driver
//	  vm_size         = "Standard_B2s"        # pools' size overrides it
//	  image           = "Debian:debian-12:12-gen2:latest"
//	  os_disk_type    = "StandardSSD_LRS"
//	  pool_os_disk_type = { manager = "Premium_LRS" }
//	  vnet_cidr       = "10.42.0.0/16"
//	  subnet_cidr     = "10.42.0.0/24"        # default: the first /24 of the VNet
//	  zones           = ["1", "2", "3"]       # default: the zones the region offers for the size; [] = none
//	  allowed_cidrs   = ["203.0.113.7/32"]    # who reaches 22 and 2376
//	  detect_operator_ip = false
//	  public_ip       = true                  # false: private addresses only (add a bastion block)
//	  bastion { address = "..." user = "..." host_key = "ssh-ed25519 ..." }
//	}
//
// What it makes, all in the cluster's resource group and tagged
// provision-cluster=<id>: a VNet with one subnet, a network security group
// (SSH and 2376 from allowed_cidrs, the swarm ports from the subnet only), and
// per VM a NIC, a Standard static public IP (unless public_ip = false) and the
// OS disk. Destroy removes a VM with its NIC, IP and disk; Teardown removes
// the VNet and NSG, or the whole resource group when the driver made it.
//
// A replaced machine's next generation is a VM of its own beside the old
// one: generation g > 1 of machine m is the VM "m-g<g>" with "m-g<g>-nic",
// "m-g<g>-ip" and "m-g<g>-osdisk", tagged provision-generation=<g>; its host
// name and machine tag stay m. The first generation keeps the plain names.
package azure

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v6"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/resources/armresources"
	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
)

func init() {
	drivers.Register("azure", New)
}

// Tags the driver adds besides the drivers.Tag* ownership tags.
const (
	TagHostKey = "provision-hostkey" // the pinned SSH host key (public half, authorized_keys form)
	TagUser    = "provision-user"    // the admin user cloud-init created
	TagZone    = "provision-zone"    // the availability zone the VM was placed in ("" = none)
)

// Deadlines of the long-running operations, polled with the SDK's pollers.
const (
	waitVM       = 15 * time.Minute // create, start, delete a VM
	waitResource = 5 * time.Minute  // NIC, public IP, NSG, VNet, disk
	waitGroup    = 30 * time.Minute // delete a whole resource group
)

// Driver makes Azure VMs. It is safe for concurrent use.
type Driver struct {
	cfg  Config
	name string
	log  *slog.Logger

	// pollEvery is the pollers' frequency; tests shorten it.
	pollEvery time.Duration
	// retry is the SDK's retry policy (429, 408, 5xx); tests shorten it.
	retry policy.RetryOptions
	// transport, when set, carries every request instead of the network
	// (tests: the SDK's fake servers). Never set outside tests.
	transport policy.Transporter
	// cred, when set, is used instead of azidentity's default chain (tests).
	cred azcore.TokenCredential
	// httpClient is used for the operator address lookup only.
	httpClient *http.Client

	clientMu sync.Mutex
	cli      *clients

	sharedMu sync.Mutex
	shared   map[string]*clusterShared // by cluster ID

	names drivers.NameLocks // serializes Create per cluster/machine

	catalog catalog
}

var (
	_ drivers.Driver      = (*Driver)(nil)
	_ drivers.Teardown    = (*Driver)(nil)
	_ drivers.Preflighter = (*Driver)(nil)
	_ drivers.Resourcer   = (*Driver)(nil)
)

// New decodes a `driver "azure" { ... }` block. It does no I/O.
func New(body hcl.Body, opts drivers.Options) (drivers.Driver, hcl.Diagnostics) {
	cfg, diags := decodeConfig(body, opts.Eval)
	if diags.HasErrors() {
		return nil, diags
	}
	return newDriver(cfg, opts), diags
}

func newDriver(cfg Config, opts drivers.Options) *Driver {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := opts.Name
	if name == "" {
		name = "azure"
	}
	return &Driver{
		cfg:       cfg,
		name:      name,
		log:       log.With("driver", name),
		pollEvery: 5 * time.Second,
		// The SDK backs off on 429 and 5xx, honouring Retry-After; give it
		// more attempts than its default three for large clusters.
		retry:      policy.RetryOptions{MaxRetries: 8, RetryDelay: 2 * time.Second, MaxRetryDelay: time.Minute},
		httpClient: &http.Client{Timeout: 10 * time.Second},
		shared:     map[string]*clusterShared{},
		catalog:    catalog{skus: map[string]skuInfo{}, images: map[string]string{}},
	}
}

// clients is one subscription's set of SDK clients.
type clients struct {
	sub    string
	vms    *armcompute.VirtualMachinesClient
	disks  *armcompute.DisksClient
	skus   *armcompute.ResourceSKUsClient
	images *armcompute.VirtualMachineImagesClient
	usage  *armcompute.UsageClient
	vnets  *armnetwork.VirtualNetworksClient
	nsgs   *armnetwork.SecurityGroupsClient
	pips   *armnetwork.PublicIPAddressesClient
	nics   *armnetwork.InterfacesClient
	lbs    *armnetwork.LoadBalancersClient // balancer.go
	groups *armresources.ResourceGroupsClient
	res    *armresources.Client
}

// cloudConfig is the SDK's description of the block's cloud.
func (d *Driver) cloudConfig() cloud.Configuration {
	switch d.cfg.Cloud {
	case CloudGovernment:
		return cloud.AzureGovernment
	case CloudChina:
		return cloud.AzureChina
	case CloudCustom:
		return cloud.Configuration{
			ActiveDirectoryAuthorityHost: d.cfg.AuthorityHost,
			Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
				cloud.ResourceManager: {Endpoint: d.cfg.ResourceManagerEndpoint, Audience: d.cfg.ResourceManagerAudience},
			},
		}
	}
	return cloud.AzurePublic
}

// secretEnv are the environment variables whose secrets azidentity's
// default chain sends to the cloud's login endpoint (authority host).
var secretEnv = []string{"AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_PASSWORD"}

// checkCustomAuthority refuses, for cloud = "custom", to let the default
// chain send a secret from the environment to the authority_host the spec
// names unless the environment names the same host in AZURE_AUTHORITY_HOST:
// a spec alone cannot send the operator's client secret, certificate or
// federated token to a login endpoint of its choosing.
func (d *Driver) checkCustomAuthority(getenv func(string) string) error {
	if d.cfg.Cloud != CloudCustom {
		return nil
	}
	var held []string
	for _, k := range secretEnv {
		if strings.TrimSpace(getenv(k)) != "" {
			held = append(held, k)
		}
	}
	if len(held) == 0 {
		return nil
	}
	norm := func(s string) string { return strings.ToLower(strings.TrimRight(strings.TrimSpace(s), "/")) }
	if norm(getenv("AZURE_AUTHORITY_HOST")) == norm(d.cfg.AuthorityHost) {
		return nil
	}
	return fmt.Errorf("cloud = \"custom\": the environment holds %s, which would be sent to authority_host %q that the spec names; set AZURE_AUTHORITY_HOST=%s in the environment to confirm it is your cloud's login endpoint, or use `az login` with that cloud registered",
		strings.Join(held, ", "), d.cfg.AuthorityHost, d.cfg.AuthorityHost)
}

// subscription is the block's subscription or AZURE_SUBSCRIPTION_ID.
func (d *Driver) subscription() (string, error) {
	if d.cfg.SubscriptionID != "" {
		return d.cfg.SubscriptionID, nil
	}
	s := strings.TrimSpace(os.Getenv("AZURE_SUBSCRIPTION_ID"))
	if s == "" {
		return "", errors.New("no Azure subscription: set subscription_id in the driver block or AZURE_SUBSCRIPTION_ID")
	}
	if !uuidRe.MatchString(s) {
		return "", fmt.Errorf("AZURE_SUBSCRIPTION_ID %q is not a subscription ID (a GUID)", s)
	}
	return s, nil
}

// clients loads the credential on first use, proves it by getting a token
// for Resource Manager, and returns the SDK clients. A failure is not
// cached: the next call tries again.
func (d *Driver) clients(ctx context.Context) (*clients, error) {
	d.clientMu.Lock()
	defer d.clientMu.Unlock()
	if d.cli != nil {
		return d.cli, nil
	}
	sub, err := d.subscription()
	if err != nil {
		return nil, err
	}
	cc := d.cloudConfig()
	cred := d.cred
	if cred == nil {
		if err := d.checkCustomAuthority(os.Getenv); err != nil {
			return nil, err
		}
		c, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
			ClientOptions: azcore.ClientOptions{Cloud: cc},
			TenantID:      d.cfg.TenantID,
			// Private clouds (Azure Stack Hub) have no instance discovery.
			DisableInstanceDiscovery: d.cfg.Cloud == CloudCustom,
		})
		if err != nil {
			return nil, fmt.Errorf("no usable Azure credentials (run `az login`, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or use a managed identity): %w", err)
		}
		cred = c
	}
	audience := cc.Services[cloud.ResourceManager].Audience
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = cred.GetToken(tctx, policy.TokenRequestOptions{Scopes: []string{strings.TrimRight(audience, "/") + "/.default"}})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("no usable Azure credentials for %s (run `az login`, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or use a managed identity): %w", d.cloudName(), err)
	}
	opts := &arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Cloud:     cc,
		Retry:     d.retry,
		Transport: d.transport,
		// The SDK's own request log stays off: it would name URLs and
		// headers at our log level; errors carry what matters.
		Logging: policy.LogOptions{},
	}}
	compute, err := armcompute.NewClientFactory(sub, cred, opts)
	if err != nil {
		return nil, fmt.Errorf("azure compute client: %w", err)
	}
	network, err := armnetwork.NewClientFactory(sub, cred, opts)
	if err != nil {
		return nil, fmt.Errorf("azure network client: %w", err)
	}
	resources, err := armresources.NewClientFactory(sub, cred, opts)
	if err != nil {
		return nil, fmt.Errorf("azure resources client: %w", err)
	}
	d.cli = &clients{
		sub:    sub,
		vms:    compute.NewVirtualMachinesClient(),
		disks:  compute.NewDisksClient(),
		skus:   compute.NewResourceSKUsClient(),
		images: compute.NewVirtualMachineImagesClient(),
		usage:  compute.NewUsageClient(),
		vnets:  network.NewVirtualNetworksClient(),
		nsgs:   network.NewSecurityGroupsClient(),
		pips:   network.NewPublicIPAddressesClient(),
		nics:   network.NewInterfacesClient(),
		lbs:    network.NewLoadBalancersClient(),
		groups: resources.NewResourceGroupsClient(),
		res:    resources.NewClient(),
	}
	return d.cli, nil
}

func (d *Driver) cloudName() string {
	if d.cfg.Cloud == CloudCustom {
		return "the Resource Manager at " + d.cfg.ResourceManagerEndpoint
	}
	return "Azure " + d.cfg.Cloud + " cloud"
}

// resourceGroup is the group the cluster's resources live in.
func (d *Driver) resourceGroup(cluster string) string {
	if d.cfg.ResourceGroup != "" {
		return d.cfg.ResourceGroup
	}
	return "provision-" + cluster
}

// ownsGroup says whether the driver makes (and removes) the resource group.
func (d *Driver) ownsGroup() bool { return d.cfg.ResourceGroup == "" }

// Names of the cluster's shared resources and of a machine's own.
func vnetName(cluster string) string { return "provision-" + cluster + "-vnet" }
func nsgName(cluster string) string  { return "provision-" + cluster + "-nsg" }

const subnetName = "swarm"

// A VM's own resources, named after the VM: drivers.InstanceName(machine,
// generation), which is the machine name for the first generation.
func nicName(vm string) string  { return vm + "-nic" }
func pipName(vm string) string  { return vm + "-ip" }
func diskName(vm string) string { return vm + "-osdisk" }

// maxVMName is the longest name Azure accepts for a Linux VM. Machine
// names have at most 63 characters, so only a later generation's suffix
// can pass it.
const maxVMName = 64

// checkVMName refuses a machine whose generation's VM name Azure would
// refuse, before anything is made for it.
func checkVMName(want drivers.MachineSpec) error {
	gen := max(1, want.Generation)
	if n := drivers.InstanceName(want.Name, gen); len(n) > maxVMName {
		return fmt.Errorf("vm name %q (generation %d of machine %q) has %d characters, Azure accepts at most %d for a Linux VM: shorten the cluster or pool name", n, gen, want.Name, len(n), maxVMName)
	}
	return nil
}

// reservedAdminUsers are the admin user names Azure refuses for a VM
// (osProfile.adminUsername), compared without regard to case.
var reservedAdminUsers = []string{"administrator", "admin", "user", "user1", "test", "user2", "test1", "user3", "admin1", "1", "123",
	"a", "actuser", "adm", "admin2", "aspnet", "backup", "console", "david", "guest",
	"john", "owner", "root", "server", "sql", "support", "support_388945a0", "sys", "test2", "test3", "user4", "user5"}

// checkAdminUser refuses an admin user name Azure would refuse only at the
// VM create, after the machine's public IP and NIC were made.
func checkAdminUser(user string) error {
	for _, r := range reservedAdminUsers {
		if strings.EqualFold(user, r) {
			return fmt.Errorf("admin user %q is a name Azure reserves and refuses for a VM: set another ssh user in the spec (the default is provision)", user)
		}
	}
	return nil
}

// lockName serializes Create calls for one VM (machine name and generation,
// as drivers.InstanceName) within this process; across processes the lookup
// by name before the create keeps Create idempotent (names are unique in a
// resource group).
func (d *Driver) lockName(cluster, name string) func() { return d.names.Lock(cluster, name) }

// clusterTags returns the tag set of a shared resource of the cluster.
func clusterTags(cluster string) map[string]*string {
	return map[string]*string{drivers.TagCluster: ptr(cluster)}
}

func ptr[T any](v T) *T { return &v }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// tagMap flattens SDK tags.
func tagMap(tags map[string]*string) map[string]string {
	out := make(map[string]string, len(tags))
	for k, v := range tags {
		out[k] = deref(v)
	}
	return out
}

// ownedBy says whether SDK tags carry the cluster's ownership tag.
func ownedBy(tags map[string]*string, cluster string) bool {
	return deref(tags[drivers.TagCluster]) == cluster
}

// wait starts a long-running operation and polls it with the SDK's poller
// until it ends, for at most limit. what names the operation for the error.
func wait[T any](ctx context.Context, d *Driver, limit time.Duration, what string, begin func(context.Context) (*runtime.Poller[T], error)) (T, error) {
	var zero T
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	p, err := begin(wctx)
	if err != nil {
		return zero, err
	}
	res, err := p.PollUntilDone(wctx, &runtime.PollUntilDoneOptions{Frequency: d.pollEvery})
	if err != nil {
		if ctx.Err() == nil && wctx.Err() != nil {
			return zero, fmt.Errorf("%s: gave up waiting after %s (the operation may still finish in Azure; the next apply finds it by name): %w", what, limit, err)
		}
		return zero, err
	}
	return res, nil
}
