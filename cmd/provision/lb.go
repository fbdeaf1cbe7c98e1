package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/docker/docker/api/types/events"
	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
	"github.com/spf13/cobra"
	_ "golang.org/x/crypto/x509roots/fallback" // CA roots for the in-cluster image, which has no /etc/ssl

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/lb"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/swarm"
)

func newLB(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lb",
		Short: "The load balancer in front of published ports",
		Long: `A cloud load balancer (AWS NLB, Azure Standard Load Balancer, DigitalOcean
load balancer) whose listeners and health checks follow the TCP ports services
publish through the swarm's routing mesh. apply reconciles it once; lb sync
--watch keeps it in step from this machine; lb deploy runs the same reconciler
as a swarm service on the managers, so it works without this machine.`,
	}
	cmd.AddCommand(newLBSync(g), newLBDeploy(g), newLBUndeploy(g))
	return cmd
}

func newLBSync(g *globals) *cobra.Command {
	var (
		watch, jsonOut, inCluster bool
		bundle                    string
		resync                    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sync FILE",
		Short: "Make the load balancers serve exactly the ports services publish",
		Long: `Read the TCP ports services publish in ingress mode from a manager (Engine API
over TLS) and converge every load balancer of the cluster: one listener and
health check per port, the machines as targets, the firewall opening exactly
those ports. With --watch, follow the swarm's service and node events and
converge within seconds of docker service create/update/rm, with a full sync
every load_balancer.resync (default 5m); Ctrl-C stops. It does not hold the
state lock: apply may run meanwhile; stop it before destroy.

A service labelled provision.lb=off keeps its ports off the load balancer.

--in-cluster is how the service lb deploy makes runs: no FILE, the spec and
credentials from the swarm secret at --bundle, the local engine's socket.`,
		Example: "  provision lb sync cluster.hcl\n  provision lb sync cluster.hcl --watch",
		Args: func(cmd *cobra.Command, args []string) error {
			if inCluster {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if err := positiveDuration(cmd, "resync", resync); err != nil {
				return err
			}
			if inCluster {
				return runInCluster(ctx, bundle, resync)
			}
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			// Only the cluster ID and the managers' addresses are needed:
			// the state lock is released at once, so that apply can run.
			l.close()
			if l.state.ClusterID == "" || len(l.state.Machines) == 0 {
				return withCode(exitUsage, fmt.Errorf("cluster %q has no machines yet: run `provision apply %s` first", l.spec.Name, args[0]))
			}
			en, err := managerEngines(ctx, g, l)
			if err != nil {
				return err
			}
			defer en.Close()
			targets := lb.Targets(l.spec, l.drivers, en)
			if len(targets) == 0 {
				return withCode(exitUsage, errors.New(noBalancerReason(l.spec, l.drivers)))
			}
			r := &lb.Reconciler{Cluster: l.state.ClusterID, Engine: en, Balancers: targets, Sources: l.spec.LoadBalancer.PublishedCIDRs,
				Log: g.log, Resync: l.spec.LoadBalancer.Resync}
			if resync > 0 {
				r.Resync = resync
			}
			out := cmd.OutOrStdout()
			if !watch {
				rs, skipped, err := r.Sync(ctx)
				if jsonOut {
					if werr := writeJSON(out, map[string]any{"balancers": rs, "skipped": skipped}); werr != nil {
						return werr
					}
				} else {
					printResults(out, rs, skipped)
				}
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Watching the swarm's services (full sync every %s); Ctrl-C stops.\n", r.Resync)
			r.OnSync = func(rs []lb.Result, err error) {
				if jsonOut {
					writeJSON(out, map[string]any{"time": time.Now().UTC(), "balancers": rs, "error": errString(err)})
					return
				}
				printResults(out, rs, nil)
			}
			return r.Watch(ctx)
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "keep following the swarm's events until interrupted")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print results as JSON (one document per sync with --watch)")
	cmd.Flags().BoolVar(&inCluster, "in-cluster", false, "run as the in-cluster reconciler (what `lb deploy` starts)")
	cmd.Flags().StringVar(&bundle, "bundle", lb.BundleFile, "with --in-cluster: the bundle (spec, variables, credentials)")
	cmd.Flags().DurationVar(&resync, "resync", 0, "full sync period while watching (default: the spec's load_balancer.resync)")
	return cmd
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func printResults(w io.Writer, rs []lb.Result, skipped []lb.Skipped) {
	ts := time.Now().Format("15:04:05")
	for _, r := range rs {
		if r.Err != nil {
			fmt.Fprintf(w, "%s %s: FAILED: %v\n", ts, r.Balancer, r.Err)
			continue
		}
		line := fmt.Sprintf("%s %s: %s", ts, r.Balancer, lb.Summary(r.Status))
		if len(r.Status.Changes) > 0 {
			line += "; " + strings.Join(r.Status.Changes, "; ")
		} else {
			line += "; in step"
		}
		fmt.Fprintln(w, line)
		if r.Status.Note != "" {
			fmt.Fprintf(w, "    %s\n", r.Status.Note)
		}
	}
	for _, s := range skipped {
		fmt.Fprintf(w, "    not balanced: %s\n", s)
	}
}

// noBalancerReason says why a cluster has no load balancer.
func noBalancerReason(c *spec.Cluster, ds map[string]drivers.Driver) string {
	if !c.LoadBalancer.Enabled {
		return "the spec turns the load balancer off (load_balancer { enabled = false })"
	}
	return fmt.Sprintf("driver %s has no load balancer (published ports are reachable on every node directly); a load_balancer { webhook { url = ... } } block can drive one of your own", strings.Join(lb.Unbalanced(c, ds), ", "))
}

// managers is an lb.Engine over the cluster's managers (mutual TLS, 2376,
// through a bastion's tunnel where SSH goes through one) that moves to the
// next manager when one stops answering.
type managers struct {
	mu  sync.Mutex
	ens []*swarm.Engine
	cur int
	e   *apply.Runner // owns the tunnels
}

var _ lb.Engine = (*managers)(nil)

// managerEngines opens clients for every recorded manager, the first one
// that answers as a swarm manager first.
func managerEngines(ctx context.Context, g *globals, l *loaded) (*managers, error) {
	cfg, err := pki.ClientTLS(l.store.PKIDir())
	if err != nil {
		return nil, err
	}
	m := &managers{e: l.runner(g, apply.Discard{})}
	for _, rec := range l.state.Machines {
		if rec.Role != spec.RoleManager || rec.Address == "" {
			continue
		}
		en, err := m.e.ConnectEngine(ctx, rec.Machine, cfg)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.ens = append(m.ens, en)
	}
	if len(m.ens) == 0 {
		return nil, errors.New("no manager is recorded in state: run `provision apply` first")
	}
	return m, nil
}

func (m *managers) Close() {
	for _, en := range m.ens {
		en.Close()
	}
	if m.e != nil {
		m.e.Close()
	}
}

func (m *managers) get() *swarm.Engine {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ens[m.cur]
}

// failed moves on from en (unless another call already did).
func (m *managers) failed(en *swarm.Engine) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ens[m.cur] == en {
		m.cur = (m.cur + 1) % len(m.ens)
	}
}

func (m *managers) ServiceList(ctx context.Context, o dswarm.ServiceListOptions) ([]dswarm.Service, error) {
	en := m.get()
	ss, err := en.ServiceList(ctx, o)
	if err != nil && ctx.Err() == nil {
		m.failed(en)
		return nil, fmt.Errorf("%s: %w", en.Name, err)
	}
	return ss, err
}

func (m *managers) NodeList(ctx context.Context, o dswarm.NodeListOptions) ([]dswarm.Node, error) {
	en := m.get()
	ns, err := en.NodeList(ctx, o)
	if err != nil && ctx.Err() == nil {
		m.failed(en)
		return nil, fmt.Errorf("%s: %w", en.Name, err)
	}
	return ns, err
}

func (m *managers) Events(ctx context.Context, o events.ListOptions) (<-chan events.Message, <-chan error) {
	en := m.get()
	msgs, errs := en.Events(ctx, o)
	out := make(chan error, 1)
	go func() {
		err := <-errs
		if ctx.Err() == nil {
			m.failed(en)
		}
		out <- fmt.Errorf("%s: %w", en.Name, err)
	}()
	return msgs, out
}

// lbReport is what status and plan say about load balancers.
type lbReport struct {
	Balancers  []lbView     `json:"balancers,omitempty"`
	Published  []int        `json:"published_ports"`
	Skipped    []lb.Skipped `json:"not_balanced,omitempty"`
	Unbalanced []string     `json:"drivers_without_load_balancer,omitempty"`
	SwarmError string       `json:"swarm_error,omitempty"`
	InCluster  string       `json:"in_cluster_reconciler,omitempty"`
}

type lbView struct {
	Balancer string `json:"balancer"`
	drivers.LBStatus
	Error string `json:"error,omitempty"`
}

// loadBalancers asks every load balancer what exists and a manager what
// the swarm publishes; best effort, bounded by timeout.
func loadBalancers(ctx context.Context, g *globals, l *loaded, timeout time.Duration) *lbReport {
	targets := lb.Targets(l.spec, l.drivers, nil)
	off := lb.Unbalanced(l.spec, l.drivers)
	rep := &lbReport{}
	if len(l.state.Machines) == 0 || l.state.ClusterID == "" {
		// Nothing can exist yet: say what will happen, ask nobody.
		for _, t := range targets {
			rep.Balancers = append(rep.Balancers, lbView{Balancer: t.Name, LBStatus: drivers.LBStatus{Note: "made when a service publishes the first port"}})
		}
		if len(rep.Balancers) == 0 {
			return nil
		}
		return rep
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var wg sync.WaitGroup
	rep.Balancers = make([]lbView, len(targets))
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := t.Balancer.Balancer(ctx, l.state.ClusterID)
			rep.Balancers[i] = lbView{Balancer: t.Name, LBStatus: st, Error: errString(err)}
		}()
	}
	if l.state.ClusterID != "" && len(l.state.Machines) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			en, err := managerEngines(ctx, g, l)
			if err != nil {
				rep.SwarmError = err.Error()
				return
			}
			defer en.Close()
			var ports []drivers.PublishedPort
			for range en.ens {
				if ports, rep.Skipped, err = lb.Published(ctx, en, nil); err == nil {
					break
				}
			}
			if err != nil {
				rep.SwarmError = err.Error()
				return
			}
			rep.Published = drivers.Ports(ports)
			if s, _, err := en.get().ServiceInspectWithRaw(ctx, lb.ServiceName, dswarm.ServiceInspectOptions{}); err == nil && s.Spec.Labels[lb.LabelCluster] == l.state.ClusterID {
				rep.InCluster = "deployed (" + s.Spec.TaskTemplate.ContainerSpec.Image + ")"
				if ts, err := en.get().TaskList(ctx, dswarm.TaskListOptions{}); err == nil {
					for _, t := range ts {
						if t.ServiceID == s.ID && t.DesiredState == dswarm.TaskStateRunning {
							rep.InCluster = fmt.Sprintf("%s, task %s", rep.InCluster, t.Status.State)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	if len(rep.Published) > 0 {
		rep.Unbalanced = off
	}
	if len(rep.Balancers) == 0 && len(rep.Unbalanced) == 0 && len(rep.Skipped) == 0 {
		return nil
	}
	return rep
}

// lines renders the report for people, one fact a line.
func (r *lbReport) lines() []string {
	if r == nil {
		return nil
	}
	var out []string
	for _, b := range r.Balancers {
		switch {
		case b.Error != "":
			out = append(out, fmt.Sprintf("load balancer %s: could not be asked: %s", b.Balancer, b.Error))
		default:
			out = append(out, fmt.Sprintf("load balancer %s: %s", b.Balancer, lb.Summary(b.LBStatus)))
			if r.SwarmError == "" && r.Published != nil && !slices.Equal(b.Ports, r.Published) && (b.Exists || len(r.Published) > 0) {
				out = append(out, fmt.Sprintf("load balancer %s: the swarm publishes %s: `provision apply` or `provision lb sync` brings it in step", b.Balancer, drivers.PortList(r.Published)))
			}
		}
	}
	if len(r.Unbalanced) > 0 {
		out = append(out, fmt.Sprintf("services publish ports %s; driver %s has no load balancer: they are reachable on every node directly", drivers.PortList(r.Published), strings.Join(r.Unbalanced, ", ")))
	}
	for _, s := range r.Skipped {
		out = append(out, "published port not balanced: "+s.String())
	}
	if r.SwarmError != "" && len(r.Balancers) > 0 {
		out = append(out, "published ports unknown (no manager answered): "+r.SwarmError)
	}
	if r.InCluster != "" {
		out = append(out, "in-cluster reconciler "+lb.ServiceName+": "+r.InCluster)
	}
	return out
}

func writeLBTable(w io.Writer, r *lbReport) {
	ls := r.lines()
	if len(ls) == 0 {
		return
	}
	fmt.Fprintln(w, "\nLoad balancer:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, l := range ls {
		fmt.Fprintf(tw, "  %s\n", l)
	}
	tw.Flush()
}

// credentialEnv lists, per driver type, the environment variables its SDK
// reads credentials and region from: what `lb deploy --credentials env`
// copies into the in-cluster reconciler's secret.
var credentialEnv = map[string][]string{
	"aws":          {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"},
	"azure":        {"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_SUBSCRIPTION_ID", "AZURE_AUTHORITY_HOST"},
	"digitalocean": {"DIGITALOCEAN_TOKEN"},
}

// regionEnv are copied even with --credentials none: they say where, not who.
var regionEnv = []string{"AWS_REGION", "AWS_DEFAULT_REGION", "AZURE_SUBSCRIPTION_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_ID"}

func newLBDeploy(g *globals) *cobra.Command {
	var binary, creds string
	cmd := &cobra.Command{
		Use:   "deploy FILE",
		Short: "Run the load balancer reconciler as a swarm service on the managers",
		Long: `Build an image from a provision binary (this one by default; a dynamically
linked one goes with its loader and libraries from this machine), load it
onto every manager through the Engine API (no registry), and run it as the
service provision-lb: one replica on a manager, the local engine's socket
mounted, following the swarm's events like lb sync --watch. It keeps the load
balancer in step while this machine is off.

The spec, variable values and the credentials the drivers need travel as a
swarm secret (encrypted in the raft log, on tmpfs in the task).
--credentials env copies the driver's SDK variables from this environment
(AWS_ACCESS_KEY_ID..., AZURE_CLIENT_SECRET..., DIGITALOCEAN_TOKEN);
--credentials none relies on the machines' own identity (an AWS instance
profile, an Azure managed identity). Running it again updates the service
when the binary, spec or credentials changed.`,
		Example: "  provision lb deploy cluster.hcl\n  GOOS=linux GOARCH=arm64 CGO_ENABLED=0 go build -o provision-arm64 ./cmd/provision && provision lb deploy cluster.hcl --binary provision-arm64",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if creds != "env" && creds != "none" {
				return withCode(exitUsage, fmt.Errorf("--credentials must be env or none, not %q", creds))
			}
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			if l.state.ClusterID == "" || len(l.state.Machines) == 0 {
				return withCode(exitUsage, fmt.Errorf("cluster %q has no machines yet: run `provision apply %s` first", l.spec.Name, args[0]))
			}
			targets := lb.Targets(l.spec, l.drivers, nil)
			if len(targets) == 0 {
				return withCode(exitUsage, errors.New(noBalancerReason(l.spec, l.drivers)))
			}
			if binary == "" {
				if binary, err = os.Executable(); err != nil {
					return err
				}
			}
			img, err := lb.BuildImage(binary)
			if err != nil {
				return withCode(exitUsage, err)
			}
			b, err := g.bundle(l, args[0], creds)
			if err != nil {
				return err
			}
			en, err := managerEngines(cmd.Context(), g, l)
			if err != nil {
				return err
			}
			defer en.Close()
			ctx := cmd.Context()
			out := cmd.ErrOrStderr()
			var leader *swarm.Engine
			for _, m := range en.ens {
				loc, err := m.Inspect(ctx)
				if err != nil {
					return err
				}
				if !loc.Manager {
					continue
				}
				if leader == nil {
					leader = m
				}
				t0 := time.Now()
				up, err := lb.LoadImage(ctx, m.Name, m.Client, img)
				if err != nil {
					return err
				}
				if up {
					fmt.Fprintf(out, "    %s: image %s loaded (%d MB, %s)\n", m.Name, img.Tag, len(img.RootTar)>>20, time.Since(t0).Round(100*time.Millisecond))
				}
			}
			if leader == nil {
				return errors.New("no recorded manager answers as a swarm manager")
			}
			changed, err := lb.Deploy(ctx, leader.Client, l.state.ClusterID, img, b)
			if err != nil {
				return err
			}
			if changed {
				fmt.Fprintf(out, "Service %s runs %s on a manager; `provision status %s` shows its task.\n", lb.ServiceName, img.Tag, args[0])
			} else {
				fmt.Fprintf(out, "Service %s already runs %s with this spec and credentials.\n", lb.ServiceName, img.Tag)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&binary, "binary", "", "Linux provision binary for the image, of the managers' architecture (default: this one)")
	cmd.Flags().StringVar(&creds, "credentials", "env", "env: copy the drivers' credential variables from this environment; none: the machines' own identity")
	return cmd
}

func newLBUndeploy(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "undeploy FILE",
		Short: "Remove the in-cluster reconciler service (the load balancer stays)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			en, err := managerEngines(cmd.Context(), g, l)
			if err != nil {
				return err
			}
			defer en.Close()
			removed, err := lb.Undeploy(cmd.Context(), en.get().Client, l.state.ClusterID)
			if err != nil {
				return err
			}
			if removed {
				fmt.Fprintf(cmd.ErrOrStderr(), "Removed service %s.\n", lb.ServiceName)
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(), "No service %s for this cluster.\n", lb.ServiceName)
			}
			return nil
		},
	}
}

// bundle gathers the spec, the variable values given to this run and the
// chosen credentials for the in-cluster reconciler.
func (g *globals) bundle(l *loaded, file, creds string) (lb.Bundle, error) {
	src, err := os.ReadFile(file)
	if err != nil {
		return lb.Bundle{}, err
	}
	b := lb.Bundle{ClusterID: l.state.ClusterID, SpecName: filepath.Base(file), Spec: src, VarArgs: g.vars, Env: map[string]string{}}
	for _, f := range g.varFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			return lb.Bundle{}, fmt.Errorf("-var-file: %w", err)
		}
		b.VarFiles = append(b.VarFiles, lb.NamedFile{Name: filepath.Base(f), Data: data})
	}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, spec.EnvPrefix) {
			k, v, _ := strings.Cut(kv, "=")
			b.Env[k] = v
		}
	}
	names := regionEnv
	if creds == "env" {
		for _, t := range lb.Targets(l.spec, l.drivers, nil) {
			if db, ok := l.spec.Driver(t.Name); ok {
				names = append(names, credentialEnv[db.Type]...)
			}
		}
	}
	for _, k := range names {
		if v, ok := os.LookupEnv(k); ok && v != "" {
			b.Env[k] = v
		}
	}
	return b, nil
}

// runInCluster is `lb sync --in-cluster`: the service `lb deploy` starts.
func runInCluster(ctx context.Context, path string, resync time.Duration) error {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read the bundle (a swarm secret `provision lb deploy` makes): %w", err)
	}
	var b lb.Bundle
	if err := json.Unmarshal(raw, &b); err != nil {
		return fmt.Errorf("bundle %s: %w", path, err)
	}
	for k, v := range b.Env {
		os.Setenv(k, v)
	}
	dir, err := os.MkdirTemp("", "provision-lb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var files []string
	for i, f := range b.VarFiles {
		p := filepath.Join(dir, fmt.Sprintf("%d-%s", i, filepath.Base(f.Name)))
		if err := os.WriteFile(p, f.Data, 0o600); err != nil {
			return err
		}
		files = append(files, p)
	}
	c, diags := spec.LoadBytes(b.SpecName, b.Spec, spec.Vars{Args: b.VarArgs, Files: files, Env: os.Environ()})
	if diags.HasErrors() {
		return fmt.Errorf("spec %s: %s", b.SpecName, diags.Error())
	}
	ds := map[string]drivers.Driver{}
	var names []string
	for _, db := range c.Drivers {
		info, _ := drivers.Lookup(db.Type)
		if info.New == nil {
			continue
		}
		d, diags := info.New(db.Body, drivers.Options{Name: db.Name, StateDir: dir, Log: log.With("driver", db.Name), Eval: db.Eval})
		if diags.HasErrors() {
			return fmt.Errorf("driver %s: %s", db.Name, diags.Error())
		}
		ds[db.Name] = d
		names = append(names, db.Name)
	}
	sort.Strings(names)
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	targets := lb.Targets(c, ds, cli)
	if len(targets) == 0 {
		return errors.New(noBalancerReason(c, ds))
	}
	r := &lb.Reconciler{Cluster: b.ClusterID, Engine: cli, Balancers: targets, Sources: c.LoadBalancer.PublishedCIDRs, Log: log, Resync: c.LoadBalancer.Resync}
	if resync > 0 {
		r.Resync = resync
	}
	r.OnSync = func(rs []lb.Result, err error) {
		for _, res := range rs {
			if res.Err == nil {
				log.Info("synced", "balancer", res.Balancer, "ports", drivers.PortList(res.Status.Ports), "address", res.Status.Address, "changes", strings.Join(res.Status.Changes, "; "))
			}
		}
	}
	log.Info("in-cluster load balancer reconciler started", "cluster", b.ClusterID, "balancers", len(targets), "drivers", strings.Join(names, ","), "resync", r.Resync.String())
	return r.Watch(ctx)
}
