package digitalocean

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/digitalocean/godo"

	"github.com/provision/provision/drivers"
)

const (
	waitActive = 10 * time.Minute
	waitGone   = 5 * time.Minute
)

// Create makes one droplet, or returns the one already tagged with this
// cluster and machine name (powering it on when off).
func (d *Driver) Create(ctx context.Context, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	if cluster == "" || want.Name == "" {
		return drivers.Machine{}, errors.New("create droplet: cluster and machine name are required")
	}
	defer d.lockName(cluster, want.Name)()
	cli, err := d.api()
	if err != nil {
		return drivers.Machine{}, err
	}
	dr, err := d.findDroplet(ctx, cli, cluster, want.Name)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("find droplet %q: %w", want.Name, err)
	}
	if dr != nil {
		d.log.InfoContext(ctx, "adopting existing droplet", "cluster", cluster, "host", want.Name, "droplet", dr.ID, "status", dr.Status)
		return d.startAndWait(ctx, cli, dr)
	}

	// Everything that can fail without the API fails here, before anything exists.
	if err := checkTags(want); err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", want.Name, err)
	}
	if _, err := drivers.UserData(want); err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", want.Name, err)
	}
	hk, err := hostKeyTag(want.HostKey.Public)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", want.Name, err)
	}
	p, err := d.planDroplet(ctx, cli, want)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", want.Name, err)
	}
	shared, err := d.ensureShared(ctx, cli, cluster, want.SSH.PublicKey, want.Metrics)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", want.Name, err)
	}
	tags := dropletTags(cluster, want, hk)
	req := &godo.DropletCreateRequest{
		Name:       want.Name,
		Region:     d.cfg.Region,
		Size:       p.size.Slug,
		Image:      godo.DropletCreateImage{Slug: d.cfg.Image},
		SSHKeys:    []godo.DropletCreateSSHKey{{Fingerprint: shared.fingerprint}},
		IPv6:       d.cfg.IPv6,
		Monitoring: d.cfg.Monitoring,
		Tags:       tags,
		VPCUUID:    shared.vpcID,
	}
	if id, err := strconv.Atoi(d.cfg.Image); err == nil {
		req.Image = godo.DropletCreateImage{ID: id}
	}
	spec := want
	if p.volumeGiB > 0 {
		vol, err := d.ensureVolume(ctx, cli, cluster, want.Name, p.volumeGiB)
		if err != nil {
			return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", want.Name, err)
		}
		req.Volumes = []godo.DropletCreateVolume{{ID: vol.ID}}
		if strings.TrimSpace(want.UserData) != "" {
			return drivers.Machine{}, fmt.Errorf("create droplet %q: user data of its own and a data volume cannot be combined yet", want.Name)
		}
		spec.UserData = volumeMount(vol.Name)
	}
	ud, err := drivers.UserData(spec)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", want.Name, err)
	}
	req.UserData = string(ud)

	var made *godo.Droplet
	err = d.once(ctx, "droplet "+want.Name,
		func() (bool, error) {
			f, err := d.findDroplet(ctx, cli, cluster, want.Name)
			made = f
			return f != nil, err
		},
		func() error {
			f, _, err := cli.Droplets.Create(ctx, req)
			made = f
			return err
		})
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q (%s, %s in %s): %w", want.Name, p.size.Slug, d.cfg.Image, d.cfg.Region, d.explain(err))
	}
	d.log.InfoContext(ctx, "created droplet", "cluster", cluster, "host", want.Name, "droplet", made.ID,
		"size", p.size.Slug, "image", d.cfg.Image, "region", d.cfg.Region, "volume_gib", p.volumeGiB)
	return d.startAndWait(ctx, cli, made)
}

// dropletTags are the droplet's ownership tags, all set in the create call.
func dropletTags(cluster string, want drivers.MachineSpec, hostKey string) []string {
	kv := map[string]string{}
	for k, v := range want.Tags {
		if strings.HasPrefix(k, "provision-") && validTag(tag(k, v)) {
			kv[k] = v
		}
	}
	kv[drivers.TagCluster] = cluster
	kv[drivers.TagMachine] = want.Name
	if want.Role != "" {
		kv[drivers.TagRole] = want.Role
	}
	if want.Pool != "" {
		kv[drivers.TagPool] = want.Pool
	}
	kv[TagUser] = want.SSH.User
	kv[TagHostKey] = hostKey
	out := make([]string, 0, len(kv))
	for k, v := range kv {
		out = append(out, tag(k, v))
	}
	sort.Strings(out)
	return out
}

// tagsOf reads "key:value" tags back into a map (other tags are left out).
func tagsOf(tags []string) map[string]string {
	m := map[string]string{}
	for _, t := range tags {
		if k, v, ok := strings.Cut(t, ":"); ok && strings.HasPrefix(k, "provision-") {
			m[k] = v
		}
	}
	return m
}

// volumeMount is the cloud-config that mounts the droplet's volume (made
// with an ext4 filesystem) at /var/lib/docker before the engine is
// installed.
func volumeMount(volume string) string {
	return "#cloud-config\n# provision: the droplet's volume holds the Docker engine's data.\nmounts:\n" +
		fmt.Sprintf("  - [\"/dev/disk/by-id/scsi-0DO_Volume_%s\", \"/var/lib/docker\", \"ext4\", \"defaults,nofail,discard,noatime\", \"0\", \"2\"]\n", volume)
}

// startAndWait powers a droplet on when it is off, waits until it is active
// with a public address and returns it.
func (d *Driver) startAndWait(ctx context.Context, cli *godo.Client, dr *godo.Droplet) (drivers.Machine, error) {
	name := tagsOf(dr.Tags)[drivers.TagMachine]
	if name == "" {
		name = dr.Name
	}
	if dr.Status == "off" {
		if _, _, err := cli.DropletActions.PowerOn(ctx, dr.ID); err != nil && !ambiguous(err) {
			return drivers.Machine{}, fmt.Errorf("power on droplet %q (%d): %w", name, dr.ID, d.explain(err))
		}
		d.log.InfoContext(ctx, "powered on droplet", "host", name, "droplet", dr.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, waitActive)
	defer cancel()
	delay := d.waitMin
	for {
		if dr.Status == "active" {
			if m := d.machine(*dr); m.Address != "" {
				return m, nil
			}
		}
		if dr.Status == "archive" {
			return drivers.Machine{}, fmt.Errorf("droplet %q (%d) is archived (destroyed): remove it from state with destroy, or apply again to replace it", name, dr.ID)
		}
		if err := sleep(ctx, delay); err != nil {
			return drivers.Machine{}, fmt.Errorf("wait for droplet %q (%d) to become active with an address (status %s): %w", name, dr.ID, dr.Status, err)
		}
		delay = min(delay*2, 15*time.Second)
		next, _, err := cli.Droplets.Get(ctx, dr.ID)
		if isNotFound(err) {
			return drivers.Machine{}, fmt.Errorf("droplet %q (%d) disappeared while starting", name, dr.ID)
		}
		if err != nil {
			return drivers.Machine{}, fmt.Errorf("wait for droplet %q (%d): %w", name, dr.ID, d.explain(err))
		}
		dr = next
	}
}

// listDroplets returns every droplet carrying the cluster tag.
func (d *Driver) listDroplets(ctx context.Context, cli *godo.Client, cluster string) ([]godo.Droplet, error) {
	ds, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.Droplet, *godo.Response, error) {
		return cli.Droplets.ListByTag(ctx, clusterTag(cluster), o)
	})
	if err != nil {
		return nil, fmt.Errorf("list droplets tagged %s: %w", clusterTag(cluster), d.explain(err))
	}
	return ds, nil
}

// findDroplet returns the cluster's droplet with that machine name, or nil.
// When several exist (two processes raced), the oldest wins.
func (d *Driver) findDroplet(ctx context.Context, cli *godo.Client, cluster, name string) (*godo.Droplet, error) {
	ds, err := d.listDroplets(ctx, cli, cluster)
	if err != nil {
		return nil, err
	}
	var found []godo.Droplet
	for _, dr := range ds {
		if tagsOf(dr.Tags)[drivers.TagMachine] == name && dr.Status != "archive" {
			found = append(found, dr)
		}
	}
	if len(found) == 0 {
		return nil, nil
	}
	sort.Slice(found, func(i, j int) bool {
		if found[i].Created != found[j].Created {
			return found[i].Created < found[j].Created // RFC 3339 in UTC: string order is time order
		}
		return found[i].ID < found[j].ID
	})
	if len(found) > 1 {
		d.log.WarnContext(ctx, "several droplets carry the same machine name; adopting the oldest", "cluster", cluster, "host", name, "droplet", found[0].ID)
	}
	return &found[0], nil
}

// Machines lists the cluster's droplets.
func (d *Driver) Machines(ctx context.Context, cluster string) ([]drivers.Machine, error) {
	cli, err := d.api()
	if err != nil {
		return nil, fmt.Errorf("%w; %s", err, d.notChecked())
	}
	ds, err := d.listDroplets(ctx, cli, cluster)
	if err != nil {
		return nil, err
	}
	ms := make([]drivers.Machine, 0, len(ds))
	for _, dr := range ds {
		if dr.Status != "archive" {
			ms = append(ms, d.machine(dr))
		}
	}
	sort.Slice(ms, func(i, j int) bool {
		if ms[i].Name != ms[j].Name {
			return ms[i].Name < ms[j].Name
		}
		return ms[i].ID < ms[j].ID
	})
	return ms, nil
}

var states = map[string]string{"active": "running", "off": "stopped", "new": "pending", "archive": "archived"}

// machine turns a droplet into the engine's plain data.
func (d *Driver) machine(dr godo.Droplet) drivers.Machine {
	tags := tagsOf(dr.Tags)
	if v, ok := tags[TagHostKey]; ok {
		tags[TagHostKey] = hostKeyFromTag(v)
	}
	m := drivers.Machine{
		Name:   tags[drivers.TagMachine],
		ID:     strconv.Itoa(dr.ID),
		Driver: d.name,
		SSH: drivers.SSHEndpoint{
			User:    tags[TagUser],
			Port:    portSSH,
			HostKey: tags[TagHostKey],
		},
		Tags:  tags,
		State: states[dr.Status],
	}
	if m.Name == "" {
		m.Name = dr.Name
	}
	if m.State == "" {
		m.State = dr.Status
	}
	if dr.Region != nil {
		m.Zone = dr.Region.Slug // a region is DigitalOcean's only failure domain a droplet names
	}
	m.Address, _ = dr.PublicIPv4()
	m.PrivateAddress, _ = dr.PrivateIPv4()
	if m.Address == "" {
		m.Address = m.PrivateAddress
	}
	return m
}

// Destroy deletes the droplet, waits until it is gone, then deletes its
// volumes (found by the cluster and machine tags, also when the droplet was
// never made) and its host key tag.
func (d *Driver) Destroy(ctx context.Context, m drivers.Machine) error {
	cli, err := d.api()
	if err != nil {
		return err
	}
	cluster := m.Tags[drivers.TagCluster]
	var dr *godo.Droplet
	if m.ID != "" {
		id, err := strconv.Atoi(m.ID)
		if err != nil {
			return fmt.Errorf("destroy %q: %q is not a droplet ID", m.Name, m.ID)
		}
		dr, _, err = cli.Droplets.Get(ctx, id)
		if isNotFound(err) {
			dr, err = nil, nil
		}
		if err != nil {
			return fmt.Errorf("destroy %q: get droplet %d: %w", m.Name, id, d.explain(err))
		}
	} else {
		if cluster == "" {
			return fmt.Errorf("destroy %q: no droplet ID and no cluster tag", m.Name)
		}
		if dr, err = d.findDroplet(ctx, cli, cluster, m.Name); err != nil {
			return fmt.Errorf("destroy %q: %w", m.Name, err)
		}
	}
	if dr != nil {
		if c := tagsOf(dr.Tags)[drivers.TagCluster]; c != "" {
			cluster = c
		}
		if _, err := cli.Droplets.Delete(ctx, dr.ID); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete droplet %q (%d): %w", m.Name, dr.ID, d.explain(err))
		}
		d.log.InfoContext(ctx, "deleting droplet", "host", m.Name, "droplet", dr.ID)
		if err := d.waitDeleted(ctx, cli, m.Name, dr.ID); err != nil {
			return err
		}
	}
	if cluster != "" {
		if err := d.deleteVolumes(ctx, cli, cluster, m.Name); err != nil {
			return fmt.Errorf("destroy %q: %w", m.Name, err)
		}
	}
	if dr != nil {
		if hk, ok := tagsOf(dr.Tags)[TagHostKey]; ok {
			d.deleteTagIfUnused(ctx, cli, tag(TagHostKey, hk))
		}
	}
	return nil
}

// waitDeleted polls until the droplet is gone.
func (d *Driver) waitDeleted(ctx context.Context, cli *godo.Client, name string, id int) error {
	ctx, cancel := context.WithTimeout(ctx, waitGone)
	defer cancel()
	delay := d.waitMin
	for {
		dr, _, err := cli.Droplets.Get(ctx, id)
		if isNotFound(err) || err == nil && dr.Status == "archive" {
			return nil
		}
		if err != nil {
			return fmt.Errorf("wait for droplet %q (%d) to go: %w", name, id, d.explain(err))
		}
		if err := sleep(ctx, delay); err != nil {
			return fmt.Errorf("wait for droplet %q (%d) to go (status %s): %w", name, id, dr.Status, err)
		}
		delay = min(delay*2, 15*time.Second)
	}
}

// deleteTagIfUnused removes a tag that no resource carries any more. Tags
// cost nothing, so a failure is only logged.
func (d *Driver) deleteTagIfUnused(ctx context.Context, cli *godo.Client, name string) {
	t, _, err := cli.Tags.Get(ctx, name)
	if isNotFound(err) {
		return
	}
	if err == nil && (t.Resources == nil || t.Resources.Count == 0) {
		if _, err = cli.Tags.Delete(ctx, name); isNotFound(err) {
			err = nil
		}
	}
	if err != nil {
		d.log.WarnContext(ctx, "could not remove an unused tag (tags cost nothing)", "tag", name, "err", err)
	}
}

// volumeName is the name of a machine's volume: unique per region and
// account, lowercase, starting with a letter, at most 64 characters.
func volumeName(cluster, machine string) string {
	suffix := cluster
	if len(suffix) > 7 {
		suffix = suffix[:7]
	}
	if len(machine) > 64-1-len(suffix) {
		machine = strings.TrimRight(machine[:64-1-len(suffix)], "-")
	}
	return machine + "-" + suffix
}

// machineVolumes lists the region's volumes carrying the cluster tag (and
// the machine's, when machine is not empty).
func (d *Driver) machineVolumes(ctx context.Context, cli *godo.Client, cluster, machine string) ([]godo.Volume, error) {
	vols, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.Volume, *godo.Response, error) {
		return cli.Storage.ListVolumes(ctx, &godo.ListVolumeParams{Region: d.cfg.Region, ListOptions: o})
	})
	if err != nil {
		return nil, fmt.Errorf("list volumes in %s: %w", d.cfg.Region, d.explain(err))
	}
	var out []godo.Volume
	for _, v := range vols {
		t := tagsOf(v.Tags)
		if t[drivers.TagCluster] == cluster && (machine == "" || t[drivers.TagMachine] == machine) {
			out = append(out, v)
		}
	}
	return out, nil
}

// ensureVolume makes (or finds) the machine's data volume, formatted ext4 by
// DigitalOcean, tagged with the cluster and machine.
func (d *Driver) ensureVolume(ctx context.Context, cli *godo.Client, cluster, machine string, gib int) (*godo.Volume, error) {
	var vol *godo.Volume
	name := volumeName(cluster, machine)
	err := d.once(ctx, "volume "+name,
		func() (bool, error) {
			vs, err := d.machineVolumes(ctx, cli, cluster, machine)
			if err != nil || len(vs) == 0 {
				return false, err
			}
			vol = &vs[0]
			return true, nil
		},
		func() error {
			v, _, err := cli.Storage.CreateVolume(ctx, &godo.VolumeCreateRequest{
				Region: d.cfg.Region, Name: name, SizeGigaBytes: int64(gib),
				Description:    "provision cluster " + cluster + ": /var/lib/docker of " + machine,
				FilesystemType: "ext4", FilesystemLabel: "docker",
				Tags: []string{clusterTag(cluster), tag(drivers.TagMachine, machine)},
			})
			if err == nil {
				vol = v
				d.log.InfoContext(ctx, "created volume", "cluster", cluster, "host", machine, "volume", v.ID, "gib", gib)
			}
			return err
		})
	if err != nil {
		return nil, fmt.Errorf("create volume %s (%d GiB): %w", name, gib, d.explain(err))
	}
	if vol.SizeGigaBytes != int64(gib) {
		return nil, fmt.Errorf("volume %s (%s) exists with %d GiB, the pool asks for %d: remove it, or set the pool's disk back", vol.Name, vol.ID, vol.SizeGigaBytes, gib)
	}
	if len(vol.DropletIDs) > 0 {
		return nil, fmt.Errorf("volume %s (%s) is attached to droplet %v, not to a droplet of machine %s", vol.Name, vol.ID, vol.DropletIDs, machine)
	}
	return vol, nil
}

// deleteVolumes deletes the machine's volumes (every volume of the cluster
// when machine is ""), waiting while a droplet being deleted still holds one.
func (d *Driver) deleteVolumes(ctx context.Context, cli *godo.Client, cluster, machine string) error {
	vols, err := d.machineVolumes(ctx, cli, cluster, machine)
	if err != nil {
		return err
	}
	var errs []error
	for _, v := range vols {
		if err := d.retryHeld(ctx, func() error {
			_, err := cli.Storage.DeleteVolume(ctx, v.ID)
			return err
		}); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete volume %s (%s): %w", v.Name, v.ID, d.explain(err)))
			continue
		}
		d.log.InfoContext(ctx, "deleted volume", "cluster", cluster, "host", machine, "volume", v.ID)
	}
	return errors.Join(errs...)
}

// retryHeld runs fn until DigitalOcean stops refusing it because something
// still holds the resource (a volume still attached to a droplet being
// deleted, a VPC whose members are not released yet), backing off from
// waitMin up to 15s, for at most depTimeout.
func (d *Driver) retryHeld(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(d.depTimeout)
	delay := d.waitMin
	for {
		err := fn()
		if err == nil || !held(err) || time.Now().Add(delay).After(deadline) {
			return err
		}
		if serr := sleep(ctx, delay); serr != nil {
			return errors.Join(err, serr)
		}
		delay = min(delay*2, 15*time.Second)
	}
}

// held reports an API refusal because something still uses the resource.
func held(err error) bool {
	var er *godo.ErrorResponse
	if !errors.As(err, &er) || er.Response == nil {
		return false
	}
	msg := strings.ToLower(er.Message)
	switch er.Response.StatusCode {
	case 409, 412, 422:
		return true
	case 403:
		return strings.Contains(msg, "member") || strings.Contains(msg, "attached")
	}
	return false
}
