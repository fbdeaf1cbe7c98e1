package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/metrics"
	"github.com/provision/provision/provision/pki"
)

// NodeMetrics is one line of `provision status --metrics`.
type NodeMetrics struct {
	Name string `json:"name"`
	// Endpoint is the engine's Prometheus endpoint (metrics-addr), "" when off.
	Endpoint string        `json:"endpoint,omitempty"`
	Summary  *metrics.Node `json:"summary,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// nodeMetrics asks every node's engine (TLS, through the bastion tunnel when
// there is one) for its summary, all nodes at once.
func nodeMetrics(ctx context.Context, g *globals, l *loaded) []NodeMetrics {
	out := make([]NodeMetrics, len(l.state.Machines))
	tlsCfg, tlsErr := pki.ClientTLS(l.store.PKIDir())
	e := l.runner(g, apply.Discard{})
	defer e.Close()
	sem := make(chan struct{}, max(1, l.spec.Parallelism))
	var wg sync.WaitGroup
	for i, m := range l.state.Machines {
		out[i] = NodeMetrics{Name: m.Name, Endpoint: l.spec.Engine.MetricsListen(m.Advertise())}
		switch {
		case m.Address == "":
			out[i].Error = "not created"
			continue
		case tlsErr != nil:
			out[i].Error = tlsErr.Error()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			en, err := e.ConnectEngine(ctx, m.Machine, tlsCfg)
			if err != nil {
				out[i].Error = err.Error()
				return
			}
			defer en.Close()
			s, err := metrics.Summary(ctx, en.Client)
			if err != nil {
				out[i].Error = err.Error()
				return
			}
			out[i].Summary = &s
		}()
	}
	wg.Wait()
	return out
}

// writeMetricsTable prints the summaries: containers running/all, CPU as a
// percent of the host, memory and disk.
func writeMetricsTable(w io.Writer, rows []NodeMetrics) error {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCONTAINERS\tCPU\tMEMORY\tDOCKER DISK\tMETRICS ENDPOINT")
	for _, r := range rows {
		if r.Summary == nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t%s (%s)\n", r.Name, dash(r.Endpoint), r.Error)
			continue
		}
		s := r.Summary
		ep := dash(r.Endpoint)
		if s.Partial != "" {
			ep += " (" + s.Partial + ")"
		}
		fmt.Fprintf(tw, "%s\t%d/%d running\t%.1f%% of %d cpu\t%s of %s\t%s in %s\t%s\n", r.Name, s.Running, s.Containers,
			s.CPUPercent, s.CPUs, bytesIEC(int64(s.MemUsed)), bytesIEC(int64(s.MemTotal)), bytesIEC(s.DiskUsed), dash(s.DiskRoot), ep)
	}
	return tw.Flush()
}

// prometheusTargets is the file_sd target list of the cluster's engine
// metrics endpoints, from state alone.
func prometheusTargets(l *loaded) ([]metrics.Group, error) {
	if l.spec.Engine.MetricsAddr == "" {
		return nil, withCode(exitUsage, fmt.Errorf("engine metrics are off in %s (engine.metrics_addr = \"off\")", l.spec.Files[0]))
	}
	var ts []metrics.Target
	for _, m := range l.state.Machines {
		if m.Address == "" {
			continue
		}
		ts = append(ts, metrics.Target{Node: m.Name, Role: m.Role, Pool: m.Pool, Address: l.spec.Engine.MetricsListen(m.Advertise())})
	}
	return metrics.FileSD(l.spec.Name, ts), nil
}

func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
