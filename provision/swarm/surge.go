package swarm

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/filters"
	dswarm "github.com/docker/docker/api/types/swarm"
)

// LabelSurge on a service holds "OWN:SURGED", its replica count and the one
// provision scaled it to, while provision runs extra replicas of it
// elsewhere before a drain; the label goes when the count is back. A run
// interrupted in between leaves it, and the next apply puts the count back
// (RestoreSurges).
const LabelSurge = "provision.surge-replicas"

// surged is one service scaled up for a drain.
type surged struct {
	id, name string
	replicas uint64 // the service's own count
	extra    uint64 // what ran on the drained node
}

// surge keeps the replicas of the services a node runs while the node is
// drained. Swarm's drain stops the node's tasks before their replacements
// start, so a service would run fewer than its replicas until they do. For
// the services that declare they may run an old and a new task at once
// (update order start-first, as for their own updates), the node is paused
// first (the swarm places nothing new on it; its tasks keep running), each
// such service with tasks on it is scaled up by that many, and the extra
// tasks are waited for Running elsewhere, up to the reschedule timeout (no
// room elsewhere: scaled back at once, a note, and a plain drain).
// Stop-first services (Docker's default: a singleton database must not run
// twice), global services and jobs drain as Docker does. Only replicas and
// the LabelSurge label change in the service's spec, so no task restarts.
// unsurge scales back after the drain.
func (m *Membership) surge(ctx context.Context, name, nodeID string) []surged {
	via := m.Via()
	if via == nil {
		return nil
	}
	n, _, err := via.API.NodeInspectWithRaw(ctx, nodeID)
	if err != nil || n.Spec.Availability == dswarm.NodeAvailabilityDrain {
		return nil // already drained (a resumed run): nothing runs there to keep
	}
	ts, err := via.API.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("node", nodeID), filters.Arg("desired-state", "running"))})
	if err != nil || len(ts) == 0 {
		return nil
	}
	on := map[string]uint64{}
	for _, t := range ts {
		on[t.ServiceID]++
	}
	ids := make([]string, 0, len(on))
	for id := range on {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []surged
	var stopFirst []string
	var cands []dswarm.Service
	for _, id := range ids {
		svc, _, err := via.API.ServiceInspectWithRaw(ctx, id, dswarm.ServiceInspectOptions{})
		if err != nil {
			m.note(name, fmt.Sprintf("service %s not scaled up before the drain: %v", short(id), err))
			continue
		}
		r := svc.Spec.Mode.Replicated
		if r == nil || r.Replicas == nil {
			continue
		}
		if u := svc.Spec.UpdateConfig; u == nil || u.Order != dswarm.UpdateOrderStartFirst {
			// Stop-first (Docker's default) says two of its tasks must not
			// run at once (one volume, one lock): it drains as Docker does.
			stopFirst = append(stopFirst, svc.Spec.Name)
			continue
		}
		cands = append(cands, svc)
	}
	if len(stopFirst) > 0 {
		m.note(name, fmt.Sprintf("service %s: update order stop-first, so its tasks here stop before they run elsewhere (start-first services keep their replicas through a drain)", strings.Join(stopFirst, ", ")))
	}
	if len(cands) == 0 {
		return nil
	}
	// Paused before any scale-up, so that no extra task lands here.
	if _, err := via.update(ctx, nodeID, func(s *dswarm.NodeSpec) bool {
		if s.Availability != dswarm.NodeAvailabilityActive {
			return false
		}
		s.Availability = dswarm.NodeAvailabilityPause
		return true
	}); err != nil {
		m.note(name, "not paused before the drain ("+err.Error()+"): its tasks stop before they run elsewhere")
		return nil
	}
	for _, svc := range cands {
		s := surged{id: svc.ID, name: svc.Spec.Name, extra: on[svc.ID]}
		scaled, err := via.updateService(ctx, svc.ID, func(spec *dswarm.ServiceSpec) bool {
			if r := spec.Mode.Replicated; r == nil || r.Replicas == nil {
				return false // no longer replicated since the look above
			}
			s.replicas = *spec.Mode.Replicated.Replicas
			if own, _, ok := parseSurge(spec.Labels[LabelSurge]); ok {
				// Left by an interrupted run that RestoreSurges could not
				// fix: its count is the service's own.
				s.replicas = own
			}
			want := s.replicas + s.extra
			spec.Labels[LabelSurge] = strconv.FormatUint(s.replicas, 10) + ":" + strconv.FormatUint(want, 10)
			spec.Mode.Replicated = &dswarm.ReplicatedService{Replicas: &want}
			return true
		})
		if err != nil {
			m.note(name, fmt.Sprintf("service %s not scaled up before the drain: %v", s.name, err))
			continue
		}
		if scaled {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil
	}
	var parts []string
	for _, s := range out {
		parts = append(parts, fmt.Sprintf("%s %d→%d", s.name, s.replicas, s.replicas+s.extra))
	}
	m.note(name, fmt.Sprintf("paused; its tasks start elsewhere before it is drained (replicas %s)", strings.Join(parts, ", ")))
	// Each service until its extra tasks run elsewhere, or the swarm says
	// they cannot be placed (a host-mode port on every other node, say):
	// that one is scaled back at once and drains as a plain one.
	ready := map[string]bool{}
	noRoom := map[string]string{}
	err = m.wait(name, "the extra replicas Running elsewhere", m.timeouts().Reschedule).Until(ctx, func(ctx context.Context) (bool, string, error) {
		var waiting []string
		for _, s := range out {
			if ready[s.id] || noRoom[s.id] != "" {
				continue
			}
			ts, err := m.Via().API.TaskList(ctx, dswarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", s.id), filters.Arg("desired-state", "running"))})
			if err != nil {
				return false, err.Error(), nil
			}
			var elsewhere uint64
			for _, t := range ts {
				switch {
				case t.NodeID != nodeID && t.Status.State == dswarm.TaskStateRunning:
					elsewhere++
				case t.Status.State == dswarm.TaskStatePending && t.Status.Err != "":
					noRoom[s.id] = t.Status.Err
				}
			}
			if elsewhere >= s.replicas {
				ready[s.id] = true
			} else if noRoom[s.id] == "" {
				waiting = append(waiting, fmt.Sprintf("%s: %d of %d running elsewhere", s.name, elsewhere, s.replicas))
			}
		}
		return len(waiting) == 0, strings.Join(waiting, "; "), nil
	})
	if err != nil && ctx.Err() != nil {
		return out
	}
	var kept, back []surged
	for _, s := range out {
		switch {
		case ready[s.id]:
			kept = append(kept, s)
			continue
		case noRoom[s.id] != "":
			m.note(name, fmt.Sprintf("service %s: no room for its extra replicas elsewhere (%s); its tasks there stop before they run elsewhere", s.name, noRoom[s.id]))
		default:
			m.note(name, fmt.Sprintf("service %s: its extra replicas did not all run elsewhere in time (%v); draining anyway", s.name, err))
		}
		back = append(back, s)
	}
	m.unsurge(context.WithoutCancel(ctx), name, back)
	return kept
}

// unsurge scales the services surge scaled up back to their own count.
func (m *Membership) unsurge(ctx context.Context, name string, ss []surged) {
	for _, s := range ss {
		if err := m.scaleBack(ctx, s.id); err != nil {
			m.note(name, fmt.Sprintf("service %s not scaled back to %d replicas: %v (the next apply does it)", s.name, s.replicas, err))
		}
	}
}

// scaleBack puts a surged service's replica count back from its LabelSurge
// label and removes the label. When the count is no longer the surged one
// (someone scaled it meanwhile), that count is kept.
func (m *Membership) scaleBack(ctx context.Context, id string) error {
	via := m.Via()
	if via == nil {
		return fmt.Errorf("no manager to ask")
	}
	_, err := via.updateService(ctx, id, func(spec *dswarm.ServiceSpec) bool {
		v, ok := spec.Labels[LabelSurge]
		if !ok {
			return false
		}
		delete(spec.Labels, LabelSurge)
		if own, to, ok := parseSurge(v); ok && spec.Mode.Replicated != nil && spec.Mode.Replicated.Replicas != nil && *spec.Mode.Replicated.Replicas == to {
			spec.Mode.Replicated = &dswarm.ReplicatedService{Replicas: &own}
		}
		return true
	})
	return err
}

// RestoreSurges puts back the replica counts a drain interrupted before it
// scaled its services back (they carry LabelSurge). One service list per
// apply when there is nothing to do.
func (m *Membership) RestoreSurges(ctx context.Context) error {
	via := m.Via()
	if via == nil {
		return nil
	}
	svcs, err := via.API.ServiceList(ctx, dswarm.ServiceListOptions{Filters: filters.NewArgs(filters.Arg("label", LabelSurge))})
	if err != nil {
		return fmt.Errorf("services an interrupted drain scaled up: %w", err)
	}
	for _, s := range svcs {
		if _, ok := s.Spec.Labels[LabelSurge]; !ok {
			continue
		}
		if err := m.scaleBack(ctx, s.ID); err != nil {
			return fmt.Errorf("service %s: scale back to its own replicas after an interrupted drain: %w", s.Spec.Name, err)
		}
		own, _, _ := parseSurge(s.Spec.Labels[LabelSurge])
		m.note("", fmt.Sprintf("service %s scaled back to its %d replicas (an interrupted drain had scaled it up)", s.Spec.Name, own))
	}
	return nil
}

// parseSurge reads a LabelSurge value, "OWN:SURGED".
func parseSurge(v string) (own, to uint64, ok bool) {
	a, b, found := strings.Cut(v, ":")
	own, err1 := strconv.ParseUint(a, 10, 64)
	to, err2 := strconv.ParseUint(b, 10, 64)
	return own, to, found && err1 == nil && err2 == nil
}
