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
// cluster, machine name and generation (powering it on when off).
//
// Generation gen of a machine is the droplet (and volume) named
// drivers.InstanceName(name, gen): the machine name for the first
// generation, "<name>-g<gen>" after, tagged provision-generation:<gen>. The
// first generation carries no generation tag, as droplets made before
// generations existed. The guest's host name (cloud-init's hostname, hence
// the swarm node's name) and the provision-machine tag stay the machine name.
func (d *Driver) Create(ctx context.Context, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	if cluster == "" || want.Name == "" {
		return drivers.Machine{}, errors.New("create droplet: cluster and machine name are required")
	}
	gen := max(1, want.Generation)
	inst := drivers.InstanceName(want.Name, gen)
	defer d.lockName(cluster, inst)()
	cli, err := d.api()
	if err != nil {
		return drivers.Machine{}, err
	}
	dr, err := d.findDroplet(ctx, cli, cluster, want.Name, gen)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("find droplet %q: %w", inst, err)
	}
	if dr != nil {
		d.log.InfoContext(ctx, "adopting existing droplet", "cluster", cluster, "host", want.Name, "generation", gen, "droplet", dr.ID, "status", dr.Status)
		return d.started(ctx, cli, dr, cluster, want)
	}

	// Everything that can fail without the API fails here, before anything exists.
	if err := checkTags(want); err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", inst, err)
	}
	if _, err := drivers.UserData(want); err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", inst, err)
	}
	hk, err := hostKeyTag(want.HostKey.Public)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", inst, err)
	}
	p, err := d.planDroplet(ctx, cli, want)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", inst, err)
	}
	shared, err := d.ensureShared(ctx, cli, cluster, want.SSH.PublicKey, want.Metrics)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", inst, err)
	}
	tags := dropletTags(cluster, want, hk)
	req := &godo.DropletCreateRequest{
		Name:       inst, // the guest's host name is want.Name, set by cloud-init
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
		vol, err := d.ensureVolume(ctx, cli, cluster, want.Name, gen, p.volumeGiB, p.engineDisk)
		if err != nil {
			return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", inst, err)
		}
		req.Volumes = []godo.DropletCreateVolume{{ID: vol.ID}}
		if !p.engineDisk {
			if strings.TrimSpace(want.UserData) != "" {
				return drivers.Machine{}, fmt.Errorf("create droplet %q: user data of its own and a data volume cannot be combined yet", inst)
			}
			spec.UserData = volumeMount(vol.Name)
		}
	}
	ud, err := drivers.UserData(spec)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q: %w", inst, err)
	}
	req.UserData = string(ud)

	var made *godo.Droplet
	err = d.once(ctx, "droplet "+inst,
		func() (bool, error) {
			f, err := d.findDroplet(ctx, cli, cluster, want.Name, gen)
			made = f
			return f != nil, err
		},
		func() error {
			f, _, err := cli.Droplets.Create(ctx, req)
			made = f
			return err
		})
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("create droplet %q (%s, %s in %s): %w", inst, p.size.Slug, d.cfg.Image, d.cfg.Region, d.explain(err))
	}
	d.log.InfoContext(ctx, "created droplet", "cluster", cluster, "host", want.Name, "generation", gen, "droplet", made.ID,
		"size", p.size.Slug, "image", d.cfg.Image, "region", d.cfg.Region, "volume_gib", p.volumeGiB)
	return d.started(ctx, cli, made, cluster, want)
}

// started is startAndWait for Create: on the machine of a spec with
// docker_disk it names where the guest sees the blank volume Create
// attached for the engine's data (DigitalOcean's stable by-id name of a
// volume carries the volume's name). The spec is the one the droplet was
// made with: a changed docker_disk replaces the machine.
func (d *Driver) started(ctx context.Context, cli *godo.Client, dr *godo.Droplet, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	m, err := d.startAndWait(ctx, cli, dr)
	if err == nil && want.DockerDiskGiB > 0 {
		m.DockerDisk = "/dev/disk/by-id/scsi-0DO_Volume_" + volumeName(cluster, want.Name, max(1, want.Generation))
	}
	return m, err
}

// dropletTags are the droplet's ownership tags, all set in the create call.
// The generation is the spec's Generation, tagged only past the first (so a
// first generation's droplet is tagged as before generations existed).
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
	delete(kv, drivers.TagGeneration)
	if gen := max(1, want.Generation); gen > 1 {
		kv[drivers.TagGeneration] = strconv.Itoa(gen)
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

// findDroplet returns the cluster's droplet with that machine name and
// generation (no generation tag: the first), or nil. When several exist (two
// processes raced), the oldest wins.
func (d *Driver) findDroplet(ctx context.Context, cli *godo.Client, cluster, name string, gen int) (*godo.Droplet, error) {
	ds, err := d.listDroplets(ctx, cli, cluster)
	if err != nil {
		return nil, err
	}
	var found []godo.Droplet
	for _, dr := range ds {
		t := tagsOf(dr.Tags)
		if t[drivers.TagMachine] == name && drivers.GenerationOf(t) == gen && dr.Status != "archive" {
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
		d.log.WarnContext(ctx, "several droplets carry the same machine name and generation; adopting the oldest", "cluster", cluster, "host", name, "generation", gen, "droplet", found[0].ID)
	}
	return &found[0], nil
}

// Machines lists the cluster's droplets, every generation of each machine:
// Name is the machine name, and Tags carry the generation past the first.
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
// volumes (found by the cluster, machine and generation tags, also when the
// droplet was never made) and its host key tag. Without an ID it finds the
// droplet by the cluster tag, the machine name and the generation in m.Tags
// (drivers.GenerationOf): another generation of the machine is left alone.
func (d *Driver) Destroy(ctx context.Context, m drivers.Machine) error {
	cli, err := d.api()
	if err != nil {
		return err
	}
	cluster := m.Tags[drivers.TagCluster]
	name, gen := m.Name, drivers.GenerationOf(m.Tags)
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
		if name == "" {
			return errors.New("destroy: no droplet ID and no machine name")
		}
		if dr, err = d.findDroplet(ctx, cli, cluster, name, gen); err != nil {
			return fmt.Errorf("destroy %q: %w", drivers.InstanceName(name, gen), err)
		}
	}
	if dr != nil {
		// The droplet's own tags say whose volumes go with it.
		t := tagsOf(dr.Tags)
		if c := t[drivers.TagCluster]; c == "" || cluster != "" && c != cluster {
			// Found by an ID (state's) that names a droplet provision did
			// not make for this cluster: it, and its volumes, stay.
			return fmt.Errorf("destroy %q: droplet %d (%s) does not carry the tag %s; not deleting it", m.Name, dr.ID, dr.Name, clusterTag(cluster))
		}
		if c := t[drivers.TagCluster]; c != "" {
			cluster = c
		}
		if n := t[drivers.TagMachine]; n != "" {
			name = n
		}
		gen = drivers.GenerationOf(t)
		if _, err := cli.Droplets.Delete(ctx, dr.ID); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete droplet %q (%d): %w", dr.Name, dr.ID, d.explain(err))
		}
		d.log.InfoContext(ctx, "deleting droplet", "host", name, "generation", gen, "droplet", dr.ID)
		if err := d.waitDeleted(ctx, cli, dr.Name, dr.ID); err != nil {
			return err
		}
	}
	if cluster != "" && name != "" {
		if err := d.deleteVolumes(ctx, cli, cluster, name, gen); err != nil {
			return fmt.Errorf("destroy %q: %w", drivers.InstanceName(name, gen), err)
		}
	}
	if dr != nil {
		if hk, ok := tagsOf(dr.Tags)[TagHostKey]; ok {
			d.deleteTagIfUnused(ctx, cli, tag(TagHostKey, hk))
		}
		// The generation tag (provision-generation:<n>) is shared with
		// other machines and clusters, like the role and pool tags: it
		// stays. Deleting a tag untags whatever took it meanwhile, and a
		// droplet that lost it would pass for its first generation.
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

// volumeName is the name of the volume of generation gen of a machine:
// unique per region and account, lowercase, starting with a letter, at most
// 64 characters. It is the instance name (drivers.InstanceName) with a piece
// of the cluster ID; a long machine name is shortened before its generation
// suffix, so two generations never share a name.
func volumeName(cluster, machine string, gen int) string {
	suffix := cluster
	if len(suffix) > 7 {
		suffix = suffix[:7]
	}
	genSuffix := strings.TrimPrefix(drivers.InstanceName(machine, gen), machine) // "" or "-g<gen>"
	if room := 64 - 1 - len(suffix) - len(genSuffix); len(machine) > room {
		machine = strings.TrimRight(machine[:room], "-")
	}
	return machine + genSuffix + "-" + suffix
}

// machineVolumes lists the region's volumes carrying the cluster tag (and,
// when machine is not empty, the machine's and generation gen's: a volume
// without a generation tag is the first generation's).
func (d *Driver) machineVolumes(ctx context.Context, cli *godo.Client, cluster, machine string, gen int) ([]godo.Volume, error) {
	vols, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.Volume, *godo.Response, error) {
		return cli.Storage.ListVolumes(ctx, &godo.ListVolumeParams{Region: d.cfg.Region, ListOptions: o})
	})
	if err != nil {
		return nil, fmt.Errorf("list volumes in %s: %w", d.cfg.Region, d.explain(err))
	}
	var out []godo.Volume
	for _, v := range vols {
		t := tagsOf(v.Tags)
		if t[drivers.TagCluster] == cluster && (machine == "" || (t[drivers.TagMachine] == machine && drivers.GenerationOf(t) == max(1, gen))) {
			out = append(out, v)
		}
	}
	return out, nil
}

// ensureVolume makes (or finds) the data volume of generation gen of a
// machine, formatted ext4 by DigitalOcean (blank for the engine.disk host
// step to format: a docker_disk), tagged with the cluster and machine (and
// the generation past the first).
func (d *Driver) ensureVolume(ctx context.Context, cli *godo.Client, cluster, machine string, gen, gib int, blank bool) (*godo.Volume, error) {
	var vol *godo.Volume
	gen = max(1, gen)
	name := volumeName(cluster, machine, gen)
	tags := []string{clusterTag(cluster), tag(drivers.TagMachine, machine)}
	desc := "provision cluster " + cluster + ": /var/lib/docker of " + machine
	if gen > 1 {
		tags = append(tags, tag(drivers.TagGeneration, strconv.Itoa(gen)))
		desc += fmt.Sprintf(" (generation %d)", gen)
	}
	err := d.once(ctx, "volume "+name,
		func() (bool, error) {
			vs, err := d.machineVolumes(ctx, cli, cluster, machine, gen)
			if err != nil || len(vs) == 0 {
				return false, err
			}
			vol = &vs[0]
			return true, nil
		},
		func() error {
			req := &godo.VolumeCreateRequest{
				Region: d.cfg.Region, Name: name, SizeGigaBytes: int64(gib),
				Description:    desc,
				FilesystemType: "ext4", FilesystemLabel: "docker",
				Tags: tags,
			}
			if blank {
				req.FilesystemType, req.FilesystemLabel = "", ""
			}
			v, _, err := cli.Storage.CreateVolume(ctx, req)
			if err == nil {
				vol = v
				d.log.InfoContext(ctx, "created volume", "cluster", cluster, "host", machine, "generation", gen, "volume", v.ID, "gib", gib)
			}
			return err
		})
	if err != nil {
		return nil, fmt.Errorf("create volume %s (%d GiB): %w", name, gib, d.explain(err))
	}
	if vol.SizeGigaBytes != int64(gib) {
		return nil, fmt.Errorf("volume %s (%s) exists with %d GiB, the pool asks for %d: remove it, or set the pool's disk (or docker_disk) back", vol.Name, vol.ID, vol.SizeGigaBytes, gib)
	}
	if len(vol.DropletIDs) > 0 {
		return nil, fmt.Errorf("volume %s (%s) is attached to droplet %v, not to a droplet of machine %s", vol.Name, vol.ID, vol.DropletIDs, drivers.InstanceName(machine, gen))
	}
	return vol, nil
}

// deleteVolumes deletes the volumes of generation gen of a machine (every
// volume of the cluster when machine is ""), waiting while a droplet being
// deleted still holds one.
func (d *Driver) deleteVolumes(ctx context.Context, cli *godo.Client, cluster, machine string, gen int) error {
	vols, err := d.machineVolumes(ctx, cli, cluster, machine, gen)
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
		d.log.InfoContext(ctx, "deleted volume", "cluster", cluster, "host", machine, "volume", v.ID, "name", v.Name)
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
