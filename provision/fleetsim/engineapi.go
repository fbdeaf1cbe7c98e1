package fleetsim

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/docker/docker/api/types/network"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/api/types/system"

	"github.com/provision/provision/provision/swarm"
	"github.com/provision/provision/provision/swarm/swarmtest"
)

// engineAPI is one host's Engine API: swarmtest's engine behind the
// configured latency, counting calls. A join waits SwarmJoin more and
// counts towards the joins in flight (what the managers carry at once).
type engineAPI struct {
	*swarmtest.Engine
	f     *Fleet
	name  string
	calls atomic.Int64
}

var _ swarm.API = (*engineAPI)(nil)

func (e *engineAPI) call(ctx context.Context) error {
	e.calls.Add(1)
	e.f.apiCalls.Add(1)
	return e.f.wait(ctx, e.f.Latency.EngineAPI)
}

func (e *engineAPI) Info(ctx context.Context) (system.Info, error) {
	if err := e.call(ctx); err != nil {
		return system.Info{}, err
	}
	return e.Engine.Info(ctx)
}

func (e *engineAPI) SwarmInit(ctx context.Context, req dswarm.InitRequest) (string, error) {
	if err := e.call(ctx); err != nil {
		return "", err
	}
	return e.Engine.SwarmInit(ctx, req)
}

func (e *engineAPI) SwarmJoin(ctx context.Context, req dswarm.JoinRequest) error {
	if err := e.call(ctx); err != nil {
		return err
	}
	n := e.f.joinsNow.Add(1)
	defer e.f.joinsNow.Add(-1)
	for {
		p := e.f.peakJoin.Load()
		if n <= p || e.f.peakJoin.CompareAndSwap(p, n) {
			break
		}
	}
	e.f.joins.Add(1)
	if err := e.f.wait(ctx, e.f.Latency.SwarmJoin); err != nil {
		return err
	}
	if e.f.failing("join", e.name) {
		return errors.New("Timeout was reached before node joined (simulated)")
	}
	if err := e.Engine.SwarmJoin(ctx, req); err != nil {
		return fmt.Errorf("%w", err)
	}
	return nil
}

func (e *engineAPI) SwarmLeave(ctx context.Context, force bool) error {
	if err := e.call(ctx); err != nil {
		return err
	}
	return e.Engine.SwarmLeave(ctx, force)
}

func (e *engineAPI) SwarmInspect(ctx context.Context) (dswarm.Swarm, error) {
	if err := e.call(ctx); err != nil {
		return dswarm.Swarm{}, err
	}
	return e.Engine.SwarmInspect(ctx)
}

func (e *engineAPI) NodeList(ctx context.Context, o dswarm.NodeListOptions) ([]dswarm.Node, error) {
	if err := e.call(ctx); err != nil {
		return nil, err
	}
	return e.Engine.NodeList(ctx, o)
}

func (e *engineAPI) NodeInspectWithRaw(ctx context.Context, id string) (dswarm.Node, []byte, error) {
	if err := e.call(ctx); err != nil {
		return dswarm.Node{}, nil, err
	}
	return e.Engine.NodeInspectWithRaw(ctx, id)
}

func (e *engineAPI) NodeUpdate(ctx context.Context, id string, v dswarm.Version, s dswarm.NodeSpec) error {
	if err := e.call(ctx); err != nil {
		return err
	}
	return e.Engine.NodeUpdate(ctx, id, v, s)
}

func (e *engineAPI) NodeRemove(ctx context.Context, id string, o dswarm.NodeRemoveOptions) error {
	if err := e.call(ctx); err != nil {
		return err
	}
	return e.Engine.NodeRemove(ctx, id, o)
}

func (e *engineAPI) TaskList(ctx context.Context, o dswarm.TaskListOptions) ([]dswarm.Task, error) {
	if err := e.call(ctx); err != nil {
		return nil, err
	}
	return e.Engine.TaskList(ctx, o)
}

func (e *engineAPI) NetworkInspect(ctx context.Context, id string, o network.InspectOptions) (network.Inspect, error) {
	if err := e.call(ctx); err != nil {
		return network.Inspect{}, err
	}
	return e.Engine.NetworkInspect(ctx, id, o)
}

func (e *engineAPI) NetworkCreate(ctx context.Context, name string, o network.CreateOptions) (network.CreateResponse, error) {
	if err := e.call(ctx); err != nil {
		return network.CreateResponse{}, err
	}
	return e.Engine.NetworkCreate(ctx, name, o)
}

func (e *engineAPI) NetworkRemove(ctx context.Context, id string) error {
	if err := e.call(ctx); err != nil {
		return err
	}
	return e.Engine.NetworkRemove(ctx, id)
}
