package digitalocean

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/digitalocean/godo"
)

// Teardown removes what the driver made for the cluster once its droplets
// are gone: volumes left by interrupted creates, the firewall, the VPC (only
// the one this driver made, found by name and description, and only once no
// member is left in it), the SSH key (only the one it imported, by name) and
// the cluster tag. It refuses while droplets of the cluster exist. Everything
// it could not delete is reported with the IDs left.
func (d *Driver) Teardown(ctx context.Context, cluster string) error {
	cli, err := d.api()
	if err != nil {
		return err
	}
	ds, err := d.listDroplets(ctx, cli, cluster)
	if err != nil {
		return fmt.Errorf("teardown %s: %w", cluster, err)
	}
	var live []string
	for _, dr := range ds {
		if dr.Status != "archive" {
			live = append(live, strconv.Itoa(dr.ID))
		}
	}
	if len(live) > 0 {
		return fmt.Errorf("teardown %s: droplets still exist: %s", cluster, strings.Join(live, ", "))
	}

	// Forget the shared resources: a later Create makes them again.
	d.sharedMu.Lock()
	delete(d.shared, cluster)
	d.sharedMu.Unlock()

	var errs []error
	if err := d.deleteVolumes(ctx, cli, cluster, "", 0); err != nil {
		errs = append(errs, err)
	}

	fw, err := d.findFirewall(ctx, cli, cluster)
	if err != nil {
		errs = append(errs, err)
	} else if fw != nil {
		if _, err := cli.Firewalls.Delete(ctx, fw.ID); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete firewall %s (%s): %w", fw.Name, fw.ID, d.explain(err)))
		} else {
			d.log.InfoContext(ctx, "deleted firewall", "cluster", cluster, "firewall", fw.ID)
		}
	}

	if d.cfg.VPCUUID == "" {
		vpc, err := d.findVPC(ctx, cli, cluster)
		if err != nil {
			errs = append(errs, err)
		} else if vpc != nil {
			if err := d.deleteVPC(ctx, cli, vpc); err != nil {
				errs = append(errs, err)
			} else {
				d.log.InfoContext(ctx, "deleted vpc", "cluster", cluster, "vpc", vpc.ID)
			}
		}
	}

	keys, err := listAll(ctx, func(o *godo.ListOptions) ([]godo.Key, *godo.Response, error) { return cli.Keys.List(ctx, o) })
	if err != nil {
		errs = append(errs, fmt.Errorf("list ssh keys: %w", d.explain(err)))
	}
	for _, k := range keys {
		if k.Name != keyName(cluster) {
			continue
		}
		if _, err := cli.Keys.DeleteByID(ctx, k.ID); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete ssh key %s (%d): %w", k.Name, k.ID, d.explain(err)))
			continue
		}
		d.log.InfoContext(ctx, "deleted ssh key", "cluster", cluster, "key", k.Name)
	}

	if len(errs) > 0 {
		return fmt.Errorf("teardown %s: resources left: %w", cluster, errors.Join(errs...))
	}
	d.deleteTagIfUnused(ctx, cli, clusterTag(cluster))
	return nil
}

// deleteVPC deletes the VPC once it has no members: a deleted droplet stays
// a member for a short while, so members are waited for up to depTimeout.
func (d *Driver) deleteVPC(ctx context.Context, cli *godo.Client, vpc *godo.VPC) error {
	deadline := time.Now().Add(d.depTimeout)
	delay := d.waitMin
	for {
		members, err := listAll(ctx, func(o *godo.ListOptions) ([]*godo.VPCMember, *godo.Response, error) {
			return cli.VPCs.ListMembers(ctx, vpc.ID, nil, o)
		})
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list members of vpc %s (%s): %w", vpc.Name, vpc.ID, d.explain(err))
		}
		if len(members) == 0 {
			_, err = cli.VPCs.Delete(ctx, vpc.ID)
			if err == nil || isNotFound(err) {
				return nil
			}
			if !held(err) {
				return fmt.Errorf("delete vpc %s (%s): %w", vpc.Name, vpc.ID, d.explain(err))
			}
		}
		if time.Now().Add(delay).After(deadline) {
			var names []string
			for _, m := range members {
				names = append(names, m.Name+" "+m.URN)
			}
			if err == nil {
				err = errors.New("members: " + strings.Join(names, ", "))
			}
			return fmt.Errorf("delete vpc %s (%s): it is not empty after %s (provision removes only an empty vpc it made): %w", vpc.Name, vpc.ID, d.depTimeout, err)
		}
		if err := sleep(ctx, delay); err != nil {
			return fmt.Errorf("delete vpc %s (%s): %w", vpc.Name, vpc.ID, err)
		}
		delay = min(delay*2, 15*time.Second)
	}
}
