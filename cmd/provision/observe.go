package main

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/plan"
)

// observeEngines asks the engine of every machine state records as a swarm
// member (TLS, 2376, a few seconds each, all at once) what it says of its
// swarm membership, and a manager for the node list: plan reports hosts
// that left the swarm or are in another one. Engines that do not answer are
// left out (status shows them).
func (l *loaded) observeEngines(ctx context.Context, g *globals, obs *plan.Observed) {
	if l.state.Swarm.ID == "" {
		return
	}
	cfg, err := pki.ClientTLS(l.store.PKIDir())
	if err != nil {
		return
	}
	log := g.log
	e := l.runner(g, apply.Discard{}) // bastion tunnels, shared by the goroutines
	defer e.Close()
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(1, l.spec.Parallelism))
	obs.Engines = map[string]plan.EngineView{}
	for _, m := range l.state.Machines {
		if m.NodeID == "" || m.Address == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			unreachable := func(err error) {
				log.Debug("engine did not answer", "host", m.Name, "err", err)
				mu.Lock()
				defer mu.Unlock()
				obs.Engines[m.Name] = plan.EngineView{State: "unreachable", Error: engineErr(err)}
			}
			en, err := e.ConnectEngine(ctx, m.Machine, cfg)
			if err != nil {
				unreachable(err)
				return
			}
			defer en.Close()
			loc, err := en.Inspect(ctx)
			if err != nil && ctx.Err() != nil {
				// Asked about its swarm, an engine whose managers are
				// electing a leader (or lost quorum) can take longer than
				// the plan waits; whether the engine itself answers is
				// another question, asked apart.
				pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
				_, perr := en.Ping(pctx)
				pcancel()
				if perr == nil {
					log.Debug("engine answers, its swarm did not in time", "host", m.Name, "err", err)
					mu.Lock()
					defer mu.Unlock()
					obs.Engines[m.Name] = plan.EngineView{State: plan.EngineBusy, Error: engineErr(err)}
					return
				}
			}
			if err != nil {
				unreachable(err)
				return
			}
			var nodes []string
			if loc.Manager && loc.ClusterID == l.state.Swarm.ID {
				if ns, err := en.Nodes(ctx); err == nil {
					for _, n := range ns {
						nodes = append(nodes, n.ID)
					}
				}
			}
			mu.Lock()
			defer mu.Unlock()
			obs.Engines[m.Name] = plan.EngineView{State: string(loc.State), NodeID: loc.NodeID, ClusterID: loc.ClusterID, Manager: loc.Manager, Managers: loc.Managers}
			if len(nodes) > 0 && obs.Nodes == nil {
				obs.Nodes = nodes
			}
		}()
	}
	wg.Wait()
}

// engineErr shortens an engine connection error for a plan line: its last
// part ("connection refused", "i/o timeout").
func engineErr(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 && i+2 < len(msg) {
		msg = msg[i+2:]
	}
	return msg
}
