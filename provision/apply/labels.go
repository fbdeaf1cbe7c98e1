package apply

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/swarm"
)

// labels sets provision's and the spec's labels on every node, and keeps the
// cluster's overlay network (encrypted when the spec says so): one call on
// a manager when nothing changes.
type labels struct{}

func (labels) Name() string { return "labels" }

// OverlayName is the cluster's attachable overlay network.
func OverlayName(cluster string) string { return cluster + "-overlay" }

func (labels) Run(ctx context.Context, r *run) error {
	if r.members == nil || r.members.Via() == nil {
		return nil
	}
	via := r.members.Via()
	leader := r.hostOf(via)
	name := OverlayName(r.Spec.Name)
	encrypt := r.overlayEncryption()
	changed, err := via.EnsureOverlay(ctx, name, r.State.ClusterID, encrypt)
	switch {
	case err != nil && leader != nil:
		r.fail(leader, "swarm.network", err)
	case err != nil:
		return err
	case changed && leader != nil:
		leader.changed = true
		r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: leader.rec.Name, Step: "swarm.network", Msg: fmt.Sprintf("overlay network %s (encrypted: %v)", name, encrypt)})
	}
	// The swarm's autolock and node certificate expiry (the unlock key is
	// kept in the state directory before anything restarts a manager).
	if err := r.swarmSecurity(ctx, via); err != nil {
		if leader == nil {
			return err
		}
		r.fail(leader, "swarm.security", err)
	}
	// Services a drain scaled up before an interrupted run could scale them
	// back get their own replica count again.
	if err := r.members.RestoreSurges(ctx); err != nil {
		if leader == nil {
			return err
		}
		r.fail(leader, "swarm.surge", err)
	}
	nodes := r.members.Nodes()
	// Label changes go to the manager at the joins' pace: one at a time
	// makes a thousand nodes a thousand round trips in a row.
	g := new(errgroup.Group)
	g.SetLimit(min(r.parallelism(), joinPace))
	for _, h := range r.live() {
		if h.rec.NodeID == "" {
			continue
		}
		// A node an interrupted engine restart left drained takes tasks again.
		if err := reactivate(ctx, r, r.members, h); err != nil {
			r.fail(h, "swarm.activate", err)
			continue
		}
		want := plan.NodeLabels(h.pool, h.rec.Name)
		// Labels provision set before and the spec no longer has go; labels
		// others set are not provision's to touch.
		var del []string
		for k := range h.rec.Labels {
			if _, ok := want[k]; !ok {
				del = append(del, k)
			}
		}
		sort.Strings(del)
		n, ok := nodes[h.rec.NodeID]
		if ok && hasLabels(n.Spec.Labels, want) && !hasAny(n.Spec.Labels, del) {
			r.recordLabels(h, want)
			continue
		}
		g.Go(func() error {
			changed, err := r.members.SetLabels(ctx, h.rec.NodeID, want, del)
			if err != nil {
				r.fail(h, "swarm.labels", err)
				return nil
			}
			r.recordLabels(h, want)
			if changed {
				r.mu.Lock()
				h.changed = true
				r.mu.Unlock()
				msg := ""
				if len(del) > 0 {
					msg = "removed " + strings.Join(del, ", ")
				}
				r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "swarm.labels", Msg: msg})
			}
			return nil
		})
	}
	_ = g.Wait()
	return r.save()
}

func (r *run) recordLabels(h *host, labels map[string]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h.rec.Labels = labels
}

func hasAny(have map[string]string, keys []string) bool {
	for _, k := range keys {
		if _, ok := have[k]; ok {
			return true
		}
	}
	return false
}

// overlayEncryption says whether the cluster's overlay network is made
// encrypted: the spec asks for it and every member's kernel has the ESP
// data path (facts); otherwise it says which cannot, once.
func (r *run) overlayEncryption() bool {
	if !r.Spec.Hardening.OverlayEncryption {
		return false
	}
	var without []string
	dropped := map[string]string{} // driver block -> why its network drops ESP
	for _, h := range r.live() {
		if h.target != nil && h.target.Facts != nil && h.target.Facts.ESP == "no" {
			without = append(without, h.rec.Name)
		}
		if dp, ok := r.Drivers[h.pool.Driver].(drivers.DataPath); ok {
			if why := dp.NoESP(); why != "" {
				dropped[h.pool.Driver] = why
			}
		}
	}
	if len(dropped) > 0 {
		names := make([]string, 0, len(dropped))
		for n := range dropped {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			r.note("", fmt.Sprintf("overlay network not encrypted: the network of driver %q drops IPsec ESP between its machines (%s); an encrypted overlay would lose the traffic between nodes", n, dropped[n]))
		}
		return false
	}
	if len(without) == 0 {
		return true
	}
	r.note("", fmt.Sprintf("overlay network not encrypted: the kernel of %s has no IPsec ESP data path (xfrm, esp4 and rfc4106(gcm(aes)) are needed); hardening.overlay_encryption takes effect once every member's kernel has it", strings.Join(without, ", ")))
	return false
}

// hostOf returns the host whose membership view is m, or nil.
func (r *run) hostOf(m *swarm.Host) *host {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range r.hosts {
		if h.member == m {
			return h
		}
	}
	return nil
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
