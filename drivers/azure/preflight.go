package azure

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v6"

	"github.com/provision/provision/drivers"
)

// skuInfo is what the driver needs of a VM size in the location.
type skuInfo struct {
	name       string
	family     string   // quota family, as usages name it ("standardBSFamily")
	vcpus      int      //
	zones      []string // availability zones offering it, sorted; nil: none
	restricted string   // why the subscription cannot use it here ("" = it can)
	premiumIO  bool     // Premium SSD OS disks allowed
	hyperV     []string // "V1", "V2"
	arch       string   // "x64", "Arm64"
}

// catalog caches, for the driver's lifetime (one command), the VM sizes
// the location offers and the images checked.
type catalog struct {
	mu     sync.Mutex
	loaded bool
	skus   map[string]skuInfo // by lower-case size name
	images map[string]string  // image URN -> "" when checked
}

// loadSKUs lists the location's VM sizes once.
func (d *Driver) loadSKUs(ctx context.Context, cli *clients) error {
	c := &d.catalog
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loaded {
		return nil
	}
	loc := d.cfg.Location
	all, err := collect(ctx, cli.skus.NewListPager(&armcompute.ResourceSKUsClientListOptions{Filter: ptr("location eq '" + loc + "'")}),
		func(p armcompute.ResourceSKUsClientListResponse) []*armcompute.ResourceSKU { return p.Value })
	if err != nil {
		return fmt.Errorf("list the VM sizes of %s: %w", loc, d.explain(err))
	}
	skus := map[string]skuInfo{}
	for _, s := range all {
		if !strings.EqualFold(deref(s.ResourceType), "virtualMachines") {
			continue
		}
		info := skuInfo{name: deref(s.Name), family: deref(s.Family)}
		for _, cp := range s.Capabilities {
			v := deref(cp.Value)
			switch deref(cp.Name) {
			case "vCPUs":
				info.vcpus, _ = strconv.Atoi(v)
			case "PremiumIO":
				info.premiumIO = strings.EqualFold(v, "true")
			case "HyperVGenerations":
				info.hyperV = strings.Split(v, ",")
			case "CpuArchitectureType":
				info.arch = v
			}
		}
		for _, li := range s.LocationInfo {
			if strings.EqualFold(deref(li.Location), loc) {
				for _, z := range li.Zones {
					info.zones = append(info.zones, deref(z))
				}
			}
		}
		for _, r := range s.Restrictions {
			switch deref(r.Type) {
			case armcompute.ResourceSKURestrictionsTypeLocation:
				info.restricted = string(deref(r.ReasonCode))
			case armcompute.ResourceSKURestrictionsTypeZone:
				if r.RestrictionInfo != nil {
					for _, z := range r.RestrictionInfo.Zones {
						info.zones = slices.DeleteFunc(info.zones, func(have string) bool { return have == deref(z) })
					}
				}
			}
		}
		sort.Strings(info.zones)
		skus[strings.ToLower(info.name)] = info
	}
	if len(skus) == 0 {
		return fmt.Errorf("location %q offers no VM sizes to this subscription: is the location name right (`az account list-locations -o table`)?", loc)
	}
	c.skus = skus
	c.loaded = true
	return nil
}

// sku returns a VM size offered in the location to the subscription.
func (d *Driver) sku(ctx context.Context, cli *clients, size string) (skuInfo, error) {
	if err := d.loadSKUs(ctx, cli); err != nil {
		return skuInfo{}, err
	}
	d.catalog.mu.Lock()
	s, ok := d.catalog.skus[strings.ToLower(size)]
	d.catalog.mu.Unlock()
	if !ok {
		return skuInfo{}, fmt.Errorf("VM size %q is not offered in %s (`az vm list-skus -l %s --resource-type virtualMachines -o table` lists them)", size, d.cfg.Location, d.cfg.Location)
	}
	if s.restricted != "" {
		return skuInfo{}, fmt.Errorf("VM size %q is not available to this subscription in %s (%s): pick another size or location, or ask Azure support", size, d.cfg.Location, s.restricted)
	}
	return s, nil
}

// zones are the availability zones machines of that size are spread over:
// the block's zones, else every zone the location offers for the size
// (none where the region has no zones).
func (d *Driver) zones(ctx context.Context, cli *clients, size string) ([]string, error) {
	if d.cfg.Zones != nil {
		return d.cfg.Zones, nil
	}
	s, err := d.sku(ctx, cli, size)
	if err != nil {
		return nil, err
	}
	return s.zones, nil
}

// checkImage checks that the marketplace image exists in the location.
func (d *Driver) checkImage(ctx context.Context, cli *clients) error {
	img := d.cfg.Image
	c := &d.catalog
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.images[img.String()]; ok {
		return nil
	}
	if strings.EqualFold(img.Version, "latest") {
		out, err := cli.images.List(ctx, d.cfg.Location, img.Publisher, img.Offer, img.SKU, &armcompute.VirtualMachineImagesClientListOptions{Top: ptr(int32(1))})
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("look up image %s: %w", img, d.explain(err))
		}
		if err != nil || len(out.VirtualMachineImageResourceArray) == 0 {
			return fmt.Errorf("image %s not found in %s (`az vm image list -l %s -p %s -f %s --all` lists its versions)", img, d.cfg.Location, d.cfg.Location, img.Publisher, img.Offer)
		}
	} else {
		if _, err := cli.images.Get(ctx, d.cfg.Location, img.Publisher, img.Offer, img.SKU, img.Version, nil); err != nil {
			if isNotFound(err) {
				return fmt.Errorf("image %s not found in %s (`az vm image list -l %s -p %s -f %s --all` lists its versions)", img, d.cfg.Location, d.cfg.Location, img.Publisher, img.Offer)
			}
			return fmt.Errorf("look up image %s: %w", img, d.explain(err))
		}
	}
	c.images[img.String()] = ""
	return nil
}

// Preflight checks, without creating anything, what Create would need:
// credentials and subscription, the location, each VM size (offered to the
// subscription, its zones, Premium disks, the image's generation and
// architecture), the image, the named resource group, the allowed CIDRs,
// each machine's VM name (a later generation's suffix can make it too long)
// and user-data, and the regional and family vCPU quotas. All
// problems are reported together.
func (d *Driver) Preflight(ctx context.Context, want []drivers.MachineSpec) error {
	cli, err := d.clients(ctx)
	if err != nil {
		return fmt.Errorf("azure preflight: %w; %s", err, d.notChecked())
	}
	// Location and subscription: nothing else can work without them.
	if err := d.loadSKUs(ctx, cli); err != nil {
		return fmt.Errorf("azure preflight: %w", err)
	}
	var errs []error
	if len(want) > 0 {
		cluster := want[0].Tags[drivers.TagCluster]
		rg := d.resourceGroup(cluster)
		got, err := cli.groups.Get(ctx, rg, nil)
		switch {
		case err != nil && !isNotFound(err):
			errs = append(errs, fmt.Errorf("resource group %q: %w", rg, d.explain(err)))
		case err != nil && !d.ownsGroup():
			errs = append(errs, fmt.Errorf("resource group %q (resource_group in the driver block) does not exist", rg))
		case err == nil && d.ownsGroup() && cluster != "" && !ownedBy(got.Tags, cluster):
			errs = append(errs, fmt.Errorf("resource group %q exists without the tag %s=%s: remove it, or name it with resource_group", rg, drivers.TagCluster, cluster))
		}
	}
	if _, err := d.allowedCIDRs(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := d.checkImage(ctx, cli); err != nil {
		errs = append(errs, err)
	}
	need := map[string]int{} // vCPUs by quota family
	total := 0
	seen := map[string]bool{}
	badUser := map[string]bool{}
	for _, m := range want {
		if err := checkVMName(m); err != nil {
			errs = append(errs, err)
		}
		if err := checkAdminUser(m.SSH.User); err != nil && !badUser[m.SSH.User] {
			badUser[m.SSH.User] = true
			errs = append(errs, err)
		}
		if ud, err := drivers.UserData(m); err != nil {
			errs = append(errs, fmt.Errorf("machine %q: %w", m.Name, err))
		} else if n := base64.StdEncoding.EncodedLen(len(ud)); n > maxCustomData {
			errs = append(errs, fmt.Errorf("machine %q: cloud-init user-data is %d bytes base64, Azure accepts at most %d", m.Name, n, maxCustomData))
		}
		size := d.size(m)
		s, err := d.sku(ctx, cli, size)
		if err != nil {
			if !seen[size] {
				errs = append(errs, err)
			}
			seen[size] = true
			continue
		}
		need[s.family] += s.vcpus
		total += s.vcpus
		key := size + "/" + m.Pool
		if seen[key] {
			continue
		}
		seen[key] = true
		if t := d.cfg.osDiskType(m.Pool); strings.HasPrefix(t, "Premium") && !s.premiumIO {
			errs = append(errs, fmt.Errorf("pool %q: VM size %s does not support %s disks (pick an \"s\" size such as Standard_D2s_v5, or os_disk_type StandardSSD_LRS)", m.Pool, size, t))
		}
		if strings.Contains(strings.ToLower(d.cfg.Image.SKU), "gen2") && len(s.hyperV) > 0 && !slices.Contains(s.hyperV, "V2") {
			errs = append(errs, fmt.Errorf("VM size %s runs only generation 1 images, image %s is generation 2", size, d.cfg.Image))
		}
		if strings.EqualFold(s.arch, "Arm64") != strings.Contains(strings.ToLower(d.cfg.Image.SKU), "arm64") {
			errs = append(errs, fmt.Errorf("VM size %s is %s, image %s is not built for it", size, s.arch, d.cfg.Image))
		}
		for _, z := range d.cfg.Zones {
			if !slices.Contains(s.zones, z) {
				errs = append(errs, fmt.Errorf("VM size %s is not offered in availability zone %s of %s (it is in zones %v)", size, z, d.cfg.Location, s.zones))
			}
		}
	}
	if total > 0 {
		if err := d.checkQuota(ctx, cli, need, total); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("azure preflight: %w", errors.Join(errs...))
	}
	return nil
}

// checkQuota compares the vCPUs the machines need with what the
// subscription's regional and per-family quotas leave.
func (d *Driver) checkQuota(ctx context.Context, cli *clients, need map[string]int, total int) error {
	usages, err := collect(ctx, cli.usage.NewListPager(d.cfg.Location, nil), func(p armcompute.UsageClientListResponse) []*armcompute.Usage { return p.Value })
	if err != nil {
		return fmt.Errorf("read the vCPU quotas of %s: %w", d.cfg.Location, d.explain(err))
	}
	left := map[string]int64{}
	for _, u := range usages {
		if u.Name == nil {
			continue
		}
		left[strings.ToLower(deref(u.Name.Value))] = deref(u.Limit) - int64(deref(u.CurrentValue))
	}
	var errs []error
	if l, ok := left["cores"]; ok && int64(total) > l {
		errs = append(errs, fmt.Errorf("the machines need %d vCPUs, the regional quota of %s leaves %d (request an increase under Subscriptions > Usage + quotas)", total, d.cfg.Location, max(l, 0)))
	}
	fams := make([]string, 0, len(need))
	for f := range need {
		fams = append(fams, f)
	}
	sort.Strings(fams)
	for _, f := range fams {
		if l, ok := left[strings.ToLower(f)]; ok && int64(need[f]) > l {
			errs = append(errs, fmt.Errorf("the machines need %d vCPUs of family %s, its quota in %s leaves %d (request an increase, or pick another size)", need[f], f, d.cfg.Location, max(l, 0)))
		}
	}
	return errors.Join(errs...)
}

// notChecked lists, for plan and preflight output, what cannot be checked
// when Resource Manager cannot be asked (no credentials, no subscription, no
// network).
func (d *Driver) notChecked() string {
	checks := []string{
		"credentials and subscription",
		"vms the cluster already has (adoption, strays)",
		fmt.Sprintf("VM sizes offered in %s (default %s) and their availability zones", d.cfg.Location, d.cfg.VMSize),
		"image " + d.cfg.Image.String() + " exists there",
	}
	if !d.ownsGroup() {
		checks = append(checks, "resource group "+d.cfg.ResourceGroup+" exists")
	}
	if len(d.cfg.AllowedCIDRs) == 0 && d.cfg.DetectOperatorIP {
		checks = append(checks, "the operator's public address (detect_operator_ip, looked up at apply)")
	}
	checks = append(checks, "vCPU quotas (regional and per family)")
	return "not checked: " + strings.Join(checks, "; ")
}
