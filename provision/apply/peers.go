package apply

import (
	"context"
	"slices"
)

// peers brings the members' firewalls up to date once machines have left:
// during the apply every host let in the old generations and the removed
// machines (they had to reach the managers while they drained and left);
// now they are gone, so a second apply finds nothing to change. Only hosts
// whose steps find work are touched (the firewall's member list).
type peers struct{}

func (peers) Name() string { return "peers" }

func (peers) Run(ctx context.Context, r *run) error {
	now := r.peers()
	if r.peersUsed == nil || slices.Equal(now, r.peersUsed) {
		return nil
	}
	var hosts []*host
	for _, h := range r.live() {
		if h.target != nil {
			hosts = append(hosts, h)
		}
	}
	r.peersUsed = now
	return r.each(ctx, hosts, "host.peers", func(ctx context.Context, h *host) error {
		defer r.release(h)
		if err := r.conn(ctx, h); err != nil {
			return err
		}
		if err := prepareHost(ctx, r, h, now); err != nil {
			return err
		}
		if len(h.pending) == 0 {
			return nil
		}
		if err := runSteps(ctx, r, h); err != nil {
			return err
		}
		return hostDone(r, h)
	})
}
