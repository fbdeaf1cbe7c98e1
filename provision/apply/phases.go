package apply

import "context"

// phase is one named stage of an apply. Each lives in its own file.
type phase interface {
	Name() string
	// Run does the phase's work. A host's failure is recorded on the host
	// (it drops out of later phases); an error stops the apply.
	Run(ctx context.Context, r *run) error
}

// phases is the literal order of an apply.
func phases() []phase {
	return []phase{
		credentials{},  // admin SSH key, cluster CA, operator's client certificate
		machines{},     // create, adopt, start; state saved around every create
		hostSteps{},    // connect, facts in one call per host, then the steps; rolling for engine restarts
		imagesPhase{},  // the spec's image archives loaded where missing (images.go), before a new node joins and gets tasks
		swarmPhase{},   // init or find the swarm; managers join (and replace) one at a time, workers in parallel
		reinstall{},    // machines replaced in place (drivers that reuse the host), one manager at a time
		labels{},       // node labels (set, changed, removed) and the cluster's overlay network
		remove{},       // drain and remove what the spec no longer wants, quorum-safe
		peers{},        // members' firewalls without the machines that left
		loadBalancer{}, // the load balancers serve the ports services publish (lb.go)
	}
}
