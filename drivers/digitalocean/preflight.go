package digitalocean

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/digitalocean/godo"

	"github.com/provision/provision/drivers"
)

// catalog remembers the region, sizes and images for the driver's lifetime
// (one command).
type catalog struct {
	mu     sync.Mutex
	region *godo.Region
	sizes  map[string]godo.Size
	images map[string]*godo.Image
}

// listAll walks a godo list call page by page.
func listAll[T any](ctx context.Context, list func(*godo.ListOptions) ([]T, *godo.Response, error)) ([]T, error) {
	var out []T
	opt := &godo.ListOptions{Page: 1, PerPage: 200}
	for {
		items, resp, err := list(opt)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
		if resp == nil || resp.Links == nil || resp.Links.IsLastPage() {
			return out, nil
		}
		page, err := resp.Links.CurrentPage()
		if err != nil {
			return nil, fmt.Errorf("paging: %w", err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		opt = &godo.ListOptions{Page: page + 1, PerPage: opt.PerPage}
	}
}

// regionInfo returns the block's region, checked to exist and be available.
func (d *Driver) regionInfo(ctx context.Context, cli *godo.Client) (*godo.Region, error) {
	c := &d.catalog
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.region != nil {
		return c.region, nil
	}
	regions, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.Region, *godo.Response, error) { return cli.Regions.List(ctx, o) })
	if err != nil {
		return nil, fmt.Errorf("list regions: %w", d.explain(err))
	}
	var slugs []string
	for i := range regions {
		r := regions[i]
		if r.Available {
			slugs = append(slugs, r.Slug)
		}
		if r.Slug != d.cfg.Region {
			continue
		}
		if !r.Available {
			return nil, fmt.Errorf("region %s (%s) takes no new droplets now: pick another region", r.Slug, r.Name)
		}
		c.region = &r
		return c.region, nil
	}
	sort.Strings(slugs)
	return nil, fmt.Errorf("region %q does not exist (available: %s)", d.cfg.Region, strings.Join(slugs, ", "))
}

// size returns the droplet size, checked to exist, be available and be
// offered in the region.
func (d *Driver) size(ctx context.Context, cli *godo.Client, slug string) (godo.Size, error) {
	c := &d.catalog
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sizes == nil {
		sizes, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.Size, *godo.Response, error) { return cli.Sizes.List(ctx, o) })
		if err != nil {
			return godo.Size{}, fmt.Errorf("list droplet sizes: %w", d.explain(err))
		}
		c.sizes = map[string]godo.Size{}
		for _, s := range sizes {
			c.sizes[s.Slug] = s
		}
	}
	s, ok := c.sizes[slug]
	switch {
	case !ok:
		return godo.Size{}, fmt.Errorf("droplet size %q does not exist (`doctl compute size list` lists them, e.g. %q)", slug, DefaultSize)
	case !s.Available || !slices.Contains(s.Regions, d.cfg.Region):
		var in []string
		for _, sz := range c.sizes {
			if sz.Available && slices.Contains(sz.Regions, d.cfg.Region) && strings.HasPrefix(sz.Slug, "s-") {
				in = append(in, sz.Slug)
			}
		}
		sort.Strings(in)
		return godo.Size{}, fmt.Errorf("droplet size %q is not offered in region %s (offered there: %s)", slug, d.cfg.Region, strings.Join(in, ", "))
	}
	return s, nil
}

// image returns the block's image, checked to exist and to be usable in the
// region.
func (d *Driver) image(ctx context.Context, cli *godo.Client) (*godo.Image, error) {
	c := &d.catalog
	c.mu.Lock()
	defer c.mu.Unlock()
	if img, ok := c.images[d.cfg.Image]; ok {
		return img, nil
	}
	var (
		img *godo.Image
		err error
	)
	if id, aerr := strconv.Atoi(d.cfg.Image); aerr == nil {
		img, _, err = cli.Images.GetByID(ctx, id)
	} else {
		img, _, err = cli.Images.GetBySlug(ctx, d.cfg.Image)
	}
	if isNotFound(err) {
		return nil, fmt.Errorf("image %q not found (a distribution slug such as %q, or the numeric ID of a snapshot or custom image)", d.cfg.Image, DefaultImage)
	}
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", d.cfg.Image, d.explain(err))
	}
	if len(img.Regions) > 0 && !slices.Contains(img.Regions, d.cfg.Region) {
		return nil, fmt.Errorf("image %q is not available in region %s (it is in %s)", d.cfg.Image, d.cfg.Region, strings.Join(img.Regions, ", "))
	}
	if img.Status != "" && img.Status != "available" {
		return nil, fmt.Errorf("image %q is %s, not available", d.cfg.Image, img.Status)
	}
	if c.images == nil {
		c.images = map[string]*godo.Image{}
	}
	c.images[d.cfg.Image] = img
	return img, nil
}

// dropletPlan is what Create derives from a machine spec and the catalog.
type dropletPlan struct {
	size      godo.Size
	image     *godo.Image
	volumeGiB int // 0: no volume
	// engineDisk: the volume is the pool's docker_disk, made blank and
	// formatted and mounted by the engine.disk host step (not cloud-init).
	engineDisk bool
}

// planDroplet resolves a machine's size and image and decides whether it
// needs a volume: when the pool asks for more disk than the size gives, a
// volume of the asked size is made and mounted at /var/lib/docker.
func (d *Driver) planDroplet(ctx context.Context, cli *godo.Client, want drivers.MachineSpec) (dropletPlan, error) {
	slug := want.Size
	if slug == "" {
		slug = d.cfg.Size
	}
	var p dropletPlan
	var err error
	if p.size, err = d.size(ctx, cli, slug); err != nil {
		return p, err
	}
	if p.image, err = d.image(ctx, cli); err != nil {
		return p, err
	}
	if p.image.MinDiskSize > p.size.Disk {
		return p, fmt.Errorf("image %q needs a %d GiB disk, size %s has %d GiB", d.cfg.Image, p.image.MinDiskSize, slug, p.size.Disk)
	}
	switch {
	case want.DockerDiskGiB > 0 && want.DiskGiB > p.size.Disk:
		return p, fmt.Errorf("machine %q: disk of %d GiB is more than size %s has (%d GiB), and docker_disk already gives the engine's data a volume of its own: pick a larger size or a smaller disk", want.Name, want.DiskGiB, slug, p.size.Disk)
	case want.DockerDiskGiB > 0:
		p.volumeGiB, p.engineDisk = want.DockerDiskGiB, true
	case want.DiskGiB > p.size.Disk:
		p.volumeGiB = want.DiskGiB
	}
	return p, nil
}

// Preflight checks, without creating anything, what Create would need: the
// token and account (active, droplet limit), the region (available, offers
// user data and volumes where needed), each size and the image, the named
// VPC, the allowed CIDRs, and every machine's user data. All problems are
// reported together.
func (d *Driver) Preflight(ctx context.Context, want []drivers.MachineSpec) error {
	cli, err := d.api()
	if err != nil {
		return fmt.Errorf("digitalocean preflight: %w; %s", err, d.notChecked())
	}
	acct, _, err := cli.Account.Get(ctx)
	if err != nil {
		// Nothing else can work: stop here.
		return fmt.Errorf("digitalocean preflight: %w", d.explain(err))
	}
	var errs []error
	if acct.Status != "" && acct.Status != "active" {
		errs = append(errs, fmt.Errorf("the DigitalOcean account is %s (%s): it cannot create droplets until that is resolved", acct.Status, acct.StatusMessage))
	}
	if d.cfg.CloudFirewall {
		if _, err := d.allowedCIDRs(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	region, err := d.regionInfo(ctx, cli)
	if err != nil {
		return fmt.Errorf("digitalocean preflight: %w", errors.Join(append(errs, err)...))
	}
	if len(region.Features) > 0 && !slices.Contains(region.Features, "metadata") {
		errs = append(errs, fmt.Errorf("region %s offers no droplet metadata, so cloud-init cannot receive the host key and admin user: pick another region", region.Slug))
	}
	volumes := 0
	seen := map[string]bool{}
	for _, m := range want {
		if _, err := drivers.UserData(m); err != nil {
			errs = append(errs, fmt.Errorf("machine %q: %w", m.Name, err))
		}
		if err := checkTags(m); err != nil {
			errs = append(errs, fmt.Errorf("machine %q: %w", m.Name, err))
		}
		p, err := d.planDroplet(ctx, cli, m)
		if err != nil {
			if key := err.Error(); !seen[key] {
				seen[key] = true
				errs = append(errs, err)
			}
			continue
		}
		if p.volumeGiB > 0 {
			volumes++
			if p.volumeGiB > 16*1024 {
				errs = append(errs, fmt.Errorf("machine %q: a volume of %d GiB is larger than DigitalOcean's 16 TiB", m.Name, p.volumeGiB))
			}
		}
	}
	if volumes > 0 && len(region.Features) > 0 && !slices.Contains(region.Features, "storage") {
		errs = append(errs, fmt.Errorf("%d machine(s) need a volume (docker_disk, or more disk than their size has), and region %s offers no volumes: pick a larger size, no docker_disk, or another region", volumes, region.Slug))
	}
	if d.cfg.VPCUUID != "" {
		vpc, _, err := cli.VPCs.Get(ctx, d.cfg.VPCUUID)
		switch {
		case isNotFound(err):
			errs = append(errs, fmt.Errorf("vpc_uuid %s not found in the account", d.cfg.VPCUUID))
		case err != nil:
			errs = append(errs, fmt.Errorf("vpc %s: %w", d.cfg.VPCUUID, d.explain(err)))
		case vpc.RegionSlug != d.cfg.Region:
			errs = append(errs, fmt.Errorf("vpc_uuid %s is in region %s, the driver's region is %s", d.cfg.VPCUUID, vpc.RegionSlug, d.cfg.Region))
		}
	}
	if err := d.checkLimits(ctx, cli, acct, want); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("digitalocean preflight: %w", errors.Join(errs...))
	}
	return nil
}

// checkLimits refuses a cluster that would take the account past its droplet
// limit: droplets the account has, plus those this apply creates (machines
// and generations not found by their tags already: a replaced machine's next
// generation is a droplet more while both exist).
func (d *Driver) checkLimits(ctx context.Context, cli *godo.Client, acct *godo.Account, want []drivers.MachineSpec) error {
	if acct.DropletLimit <= 0 || len(want) == 0 {
		return nil
	}
	_, resp, err := cli.Droplets.List(ctx, &godo.ListOptions{Page: 1, PerPage: 1})
	if err != nil {
		return fmt.Errorf("count droplets: %w", d.explain(err))
	}
	have := 0
	if resp != nil && resp.Meta != nil {
		have = resp.Meta.Total
	}
	cluster := want[0].Tags[drivers.TagCluster]
	existing := map[string]bool{}
	if cluster != "" {
		ds, err := d.listDroplets(ctx, cli, cluster)
		if err != nil {
			return err
		}
		for _, dr := range ds {
			t := tagsOf(dr.Tags)
			existing[drivers.InstanceName(t[drivers.TagMachine], drivers.GenerationOf(t))] = true
		}
	}
	add := 0
	for _, m := range want {
		if !existing[drivers.InstanceName(m.Name, max(1, m.Generation))] {
			add++
		}
	}
	if have+add > acct.DropletLimit {
		return fmt.Errorf("droplet limit: the account has %d droplets and may have %d; this apply creates %d more (ask DigitalOcean support to raise the limit, or remove droplets)",
			have, acct.DropletLimit, add)
	}
	return nil
}

// checkTags refuses ownership tag values DigitalOcean would not take.
func checkTags(m drivers.MachineSpec) error {
	for _, k := range []string{drivers.TagCluster, drivers.TagMachine, drivers.TagRole, drivers.TagPool} {
		if v := m.Tags[k]; v != "" && !validTag(tag(k, v)) {
			return fmt.Errorf("tag %s=%q cannot be a DigitalOcean tag (letters, digits, ':', '-', '_', at most 255)", k, v)
		}
	}
	if u := m.SSH.User; u != "" && !validTag(tag(TagUser, u)) {
		return fmt.Errorf("admin user %q cannot be kept in a DigitalOcean tag (letters, digits, '-', '_')", u)
	}
	return nil
}

// notChecked lists, for plan and preflight output, what cannot be checked
// without the API.
func (d *Driver) notChecked() string {
	checks := []string{
		"the token and account (status, droplet limit)",
		"droplets the cluster already has (adoption, strays)",
		fmt.Sprintf("region %s, size %s (and the pools' sizes) and image %s", d.cfg.Region, d.cfg.Size, d.cfg.Image),
		"which pools need a volume (more disk than the size has)",
	}
	if d.cfg.VPCUUID != "" {
		checks = append(checks, "vpc "+d.cfg.VPCUUID+" exists in "+d.cfg.Region)
	}
	if len(d.cfg.AllowedCIDRs) == 0 && d.cfg.DetectOperatorIP && d.cfg.CloudFirewall {
		checks = append(checks, "the operator's public address (detect_operator_ip, looked up at apply)")
	}
	return "not checked: " + strings.Join(checks, "; ")
}
