package digitalocean

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/digitalocean/godo"

	"github.com/provision/provision/drivers"
)

// Resources lists the cluster's VPC, firewall, SSH key and volumes: what
// exists (keep, or remove when want is empty) and what Create would add.
// Without a token it returns what it would create from the spec alone and an
// error saying what it could not check.
func (d *Driver) Resources(ctx context.Context, cluster string, want []drivers.MachineSpec) ([]drivers.Resource, error) {
	cli, err := d.api()
	if err != nil {
		if len(want) == 0 {
			return nil, fmt.Errorf("%w; %s", err, d.notChecked())
		}
		return d.planned(cluster), fmt.Errorf("%w; %s", err, d.notChecked())
	}
	action := drivers.ResourceKeep
	if len(want) == 0 {
		action = drivers.ResourceRemove
	}
	var (
		out  []drivers.Resource
		errs []error
	)
	planned := map[string]drivers.Resource{}
	for _, r := range d.planned(cluster) {
		planned[r.Kind] = r
	}
	add := func(kind string, exists bool, r drivers.Resource) {
		switch {
		case exists:
			r.Action = action
			out = append(out, r)
		case len(want) > 0:
			if p, ok := planned[kind]; ok {
				out = append(out, p)
			}
		}
	}

	if d.cfg.VPCUUID == "" {
		vpc, err := d.findVPC(ctx, cli, cluster)
		if err != nil {
			errs = append(errs, err)
		} else if vpc != nil {
			add("vpc", true, drivers.Resource{Kind: "vpc", Name: vpc.Name, ID: vpc.ID, Note: vpc.IPRange + " in " + vpc.RegionSlug})
		} else {
			add("vpc", false, drivers.Resource{})
		}
	}
	if d.cfg.CloudFirewall {
		fw, err := d.findFirewall(ctx, cli, cluster)
		if err != nil {
			errs = append(errs, err)
		} else if fw != nil {
			add("firewall", true, drivers.Resource{Kind: "firewall", Name: fw.Name, ID: fw.ID, Note: d.firewallNote(cluster)})
		} else {
			add("firewall", false, drivers.Resource{})
		}
	}
	keys, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.Key, *godo.Response, error) { return cli.Keys.List(ctx, o) })
	if err != nil {
		errs = append(errs, fmt.Errorf("list ssh keys: %w", d.explain(err)))
	} else {
		found := false
		for _, k := range keys {
			if k.Name == keyName(cluster) {
				found = true
				add("ssh-key", true, drivers.Resource{Kind: "ssh-key", Name: k.Name, ID: k.Fingerprint})
			}
		}
		if !found {
			add("ssh-key", false, drivers.Resource{})
		}
	}

	vols, err := d.machineVolumes(ctx, cli, cluster, "", 0)
	if err != nil {
		errs = append(errs, err)
	}
	hasVolume := map[string]bool{} // by instance name: machine and generation
	for _, v := range vols {
		t := tagsOf(v.Tags)
		m, gen := t[drivers.TagMachine], drivers.GenerationOf(t)
		hasVolume[drivers.InstanceName(m, gen)] = true
		of := m
		if gen > 1 {
			of = fmt.Sprintf("%s (generation %d)", m, gen)
		}
		out = append(out, drivers.Resource{Kind: "volume", Name: v.Name, ID: v.ID, Action: action,
			Note: fmt.Sprintf("%d GiB, /var/lib/docker of %s", v.SizeGigaBytes, of)})
	}
	for _, m := range want {
		gen := max(1, m.Generation)
		if hasVolume[drivers.InstanceName(m.Name, gen)] {
			continue
		}
		p, err := d.planDroplet(ctx, cli, m)
		if err != nil {
			errs = append(errs, err)
			break // the same catalog error for every machine
		}
		switch {
		case p.engineDisk:
			out = append(out, drivers.Resource{Kind: "volume", Name: volumeName(cluster, m.Name, gen), Action: drivers.ResourceCreate,
				Note: fmt.Sprintf("%d GiB, /var/lib/docker of %s (docker_disk)", p.volumeGiB, m.Name)})
		case p.volumeGiB > 0:
			out = append(out, drivers.Resource{Kind: "volume", Name: volumeName(cluster, m.Name, gen), Action: drivers.ResourceCreate,
				Note: fmt.Sprintf("%d GiB, /var/lib/docker of %s (size %s has %d GiB)", p.volumeGiB, m.Name, p.size.Slug, p.size.Disk)})
		}
	}
	if rs, err := d.balancerResources(ctx, cli, cluster, action); err != nil {
		errs = append(errs, err)
	} else {
		out = append(out, rs...)
	}
	return out, errors.Join(errs...)
}

// planned is what Create makes for the cluster besides droplets, from the
// spec alone.
func (d *Driver) planned(cluster string) []drivers.Resource {
	var out []drivers.Resource
	if d.cfg.VPCUUID == "" {
		rng := d.cfg.VPCIPRange
		if rng == "" {
			rng = "a free range DigitalOcean picks"
		}
		out = append(out, drivers.Resource{Kind: "vpc", Name: d.baseName(cluster), Action: drivers.ResourceCreate, Note: rng + " in " + d.cfg.Region})
	}
	if d.cfg.CloudFirewall {
		out = append(out, drivers.Resource{Kind: "firewall", Name: d.baseName(cluster), Action: drivers.ResourceCreate, Note: d.firewallNote(cluster)})
	}
	out = append(out, drivers.Resource{Kind: "ssh-key", Name: keyName(cluster), Action: drivers.ResourceCreate,
		Note: "the cluster's admin key, unless the account already has it"})
	return out
}

func (d *Driver) firewallNote(cluster string) string {
	from := strings.Join(d.cfg.AllowedCIDRs, ", ")
	if from == "" {
		from = "the operator's address (looked up at apply)"
	}
	return fmt.Sprintf("22 and 2376 from %s; swarm ports between droplets tagged %s; all outbound", from, clusterTag(cluster))
}
