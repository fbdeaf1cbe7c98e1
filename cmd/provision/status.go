package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	dswarm "github.com/docker/docker/api/types/swarm"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/pki"
	"github.com/provision/provision/provision/state"
)

func pickMachine(l *loaded, name string) (*state.Machine, error) {
	if err := l.requireMachines(); err != nil {
		return nil, err
	}
	if name == "" {
		for _, m := range l.state.Machines {
			if m.Role == "manager" && m.Address != "" {
				return m, nil
			}
		}
		return l.state.Machines[0], nil
	}
	if m := l.state.Machine(name); m != nil {
		return m, nil
	}
	var names []string
	for _, m := range l.state.Machines {
		names = append(names, m.Name)
	}
	return nil, withCode(exitUsage, fmt.Errorf("no machine %q in cluster %q (have: %s)", name, l.spec.Name, strings.Join(names, ", ")))
}

// NodeStatus is one line of `provision status`.
type NodeStatus struct {
	Name      string `json:"name"`
	Role      string `json:"role"`
	Pool      string `json:"pool"`
	Driver    string `json:"driver"`
	Address   string `json:"address"`
	Zone      string `json:"zone,omitempty"`   // the failure domain the driver placed it in
	Status    string `json:"status"`           // provision's: creating, created, ready
	Engine    string `json:"engine,omitempty"` // engine version over TLS
	Swarm     string `json:"swarm,omitempty"`  // ready, down, unknown, not joined
	Manager   string `json:"manager,omitempty"`
	Leader    bool   `json:"leader,omitempty"`
	NodeID    string `json:"node_id,omitempty"`
	CertUntil string `json:"cert_not_after,omitempty"`
	// The prune service's last run (over SSH): when it finished, its
	// systemd result and the space `docker ... prune` said it reclaimed.
	PruneLastRun   string `json:"prune_last_run,omitempty"`
	PruneResult    string `json:"prune_result,omitempty"`
	PruneReclaimed string `json:"prune_reclaimed,omitempty"`
	Error          string `json:"error,omitempty"`
}

func newStatus(g *globals) *cobra.Command {
	var jsonOut, withMetrics, prometheus bool
	cmd := &cobra.Command{
		Use:     "status FILE",
		Short:   "List nodes with role, address, engine version and swarm state",
		Example: "  provision status examples/local.hcl\n  provision status cluster.hcl --json\n  provision status cluster.hcl --metrics\n  provision status cluster.hcl --prometheus > /etc/prometheus/docker.json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if prometheus && (jsonOut || withMetrics) {
				// It printed the target list and silently dropped the others.
				return withCode(exitUsage, errors.New("--prometheus prints only a target list: it does not combine with --json or --metrics"))
			}
			l, err := g.openRead(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			if err := l.requireState(); err != nil {
				return err
			}
			if prometheus { // metrics.go
				ts, err := prometheusTargets(l)
				if err != nil {
					return err
				}
				return writeJSON(cmd.OutOrStdout(), ts)
			}
			rows, strays := status(cmd.Context(), g, l)
			// Without the operator's client certificate no engine was asked:
			// the table says so per node, and the command fails.
			var tlsErr error
			if len(l.state.Machines) > 0 {
				if _, err := pki.ClientTLS(l.store.PKIDir()); err != nil {
					tlsErr = fmt.Errorf("no engine could be asked: %w", err)
				}
			}
			zoneWarn := zoneWarning(cmd.Context(), l, rows)          // zones.go
			lbs := loadBalancers(cmd.Context(), g, l, 8*time.Second) // lb.go
			var ms []NodeMetrics
			if withMetrics {
				ms = nodeMetrics(cmd.Context(), g, l)
			}
			if jsonOut {
				out := map[string]any{"cluster": l.spec.Name, "cluster_id": l.state.ClusterID, "swarm_id": l.state.Swarm.ID, "nodes": rows, "unrecorded_nodes": strays, "load_balancer": lbs}
				if zoneWarn != "" {
					out["zone_warning"] = zoneWarn
				}
				if withMetrics {
					out["metrics"] = ms
				}
				if err := writeJSON(cmd.OutOrStdout(), out); err != nil {
					return err
				}
				return tlsErr
			}
			defer writeLBTable(cmd.OutOrStdout(), lbs)
			if withMetrics {
				defer writeMetricsTable(cmd.OutOrStdout(), ms)
			}
			defer func() {
				if zoneWarn != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "\nWARNING: %s.\n", zoneWarn)
				}
				if len(strays) > 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "\nThe swarm also lists %d node(s) provision does not record: %s.\n`provision apply` removes the dead ones; others joined outside provision.\n", len(strays), strings.Join(strays, ", "))
				}
			}()
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			defer fmt.Fprint(cmd.OutOrStdout(), pkiNotes(l, time.Now()))
			withZone := false
			for _, r := range rows {
				withZone = withZone || r.Zone != ""
			}
			zoneCol := func(r NodeStatus) string {
				if !withZone {
					return ""
				}
				return dash(r.Zone) + "\t"
			}
			if withZone {
				fmt.Fprintln(tw, "NAME\tROLE\tPOOL\tADDRESS\tZONE\tENGINE\tSWARM\tMANAGER\tCERT EXPIRES\tPRUNED\tSTATUS")
			} else {
				fmt.Fprintln(tw, "NAME\tROLE\tPOOL\tADDRESS\tENGINE\tSWARM\tMANAGER\tCERT EXPIRES\tPRUNED\tSTATUS")
			}
			for _, r := range rows {
				mgr := r.Manager
				if r.Leader {
					mgr = "leader"
				}
				st := r.Status
				if r.Error != "" {
					st += " (" + r.Error + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Role, r.Pool, r.Address, zoneCol(r), dash(r.Engine), dash(r.Swarm), dash(mgr), certColumn(l, r.CertUntil, time.Now()), pruneColumn(r, time.Now()), st)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			return tlsErr
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	cmd.Flags().BoolVar(&withMetrics, "metrics", false, "also show each node's containers, CPU, memory and disk use (from its engine API)")
	cmd.Flags().BoolVar(&prometheus, "prometheus", false, "print a Prometheus file_sd target list of the engines' metrics endpoints, and nothing else")
	return cmd
}

// certColumn is a node certificate's expiry date, how long is left, and
// "renews" when it is inside the spec's renewal window (the next apply
// reissues it).
func certColumn(l *loaded, notAfter string, now time.Time) string {
	t, err := time.Parse(time.RFC3339, notAfter)
	if notAfter == "" || err != nil || t.IsZero() {
		return "-"
	}
	left := t.Sub(now)
	s := fmt.Sprintf("%s (%s)", t.UTC().Format("2006-01-02"), days(left))
	if left < time.Duration(l.spec.TLS.RenewBeforeHours)*time.Hour {
		s += " renews"
	}
	return s
}

func days(d time.Duration) string {
	if d < 0 {
		return "expired"
	}
	if d < 48*time.Hour {
		return d.Round(time.Hour).String()
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// pkiNotes are the lines status and plan print about the cluster's
// certificates: the operator's client certificate, a CA rotation or a
// `rotate certs` under way.
func pkiNotes(l *loaded, now time.Time) string {
	p := l.state.PKI
	var b strings.Builder
	if !p.ClientNotAfter.IsZero() {
		fmt.Fprintf(&b, "\nOperator client certificate expires %s (%s); cluster CA %s expires %s.\n", p.ClientNotAfter.UTC().Format("2006-01-02"), days(p.ClientNotAfter.Sub(now)), p.CASerial, p.CANotAfter.UTC().Format("2006-01-02"))
	}
	if p.Rotation != "" {
		fmt.Fprintf(&b, "A CA rotation is under way (phase %s of trust, reissue, drop): `provision rotate ca` finishes it.\n", p.Rotation)
	}
	if !p.ReissueBefore.IsZero() {
		fmt.Fprintf(&b, "`provision rotate certs` is under way: certificates issued before %s are reissued by the next apply or `provision rotate certs`.\n", p.ReissueBefore.UTC().Format(time.RFC3339))
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// status asks every engine (TLS, 2376) for its version and a manager for the
// node list, and every host (one SSH command) for its last prune run; all
// hosts at once.
//
// strays are the swarm's nodes that match no recorded machine (dead nodes
// left by a lost host, or nodes joined by hand), as "hostname (id, state)".
func status(ctx context.Context, g *globals, l *loaded) (rows []NodeStatus, strays []string) {
	rows = make([]NodeStatus, len(l.state.Machines))
	tlsCfg, tlsErr := pki.ClientTLS(l.store.PKIDir())
	e := l.runner(g, apply.Discard{}) // for SSH (Dial) and engine tunnels; shared by the goroutines
	defer e.Close()
	sshSem := make(chan struct{}, max(1, l.spec.Parallelism))
	var wg sync.WaitGroup
	var nodes []dswarm.Node
	var nodesOnce sync.Once
	for i, m := range l.state.Machines {
		rows[i] = NodeStatus{Name: m.Name, Role: m.Role, Pool: m.Pool, Driver: m.Driver, Address: m.Address, Zone: m.Zone, Status: m.Status, NodeID: m.NodeID}
		if !m.CertNotAfter.IsZero() {
			rows[i].CertUntil = m.CertNotAfter.Format(time.RFC3339)
		}
		if m.Address == "" {
			continue
		}
		if l.spec.Prune.Enabled {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sshSem <- struct{}{}
				defer func() { <-sshSem }()
				ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				p, err := lastPrune(ctx, e, m)
				if err != nil {
					g.log.Debug("prune status", "host", m.Name, "err", err)
					p.Result = "unknown"
				}
				rows[i].PruneLastRun, rows[i].PruneResult, rows[i].PruneReclaimed = p.LastRun, p.Result, p.Reclaimed
			}()
		}
		if tlsErr != nil {
			rows[i].Error = "engine not asked: the operator client certificate is unusable, see below"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			en, err := e.ConnectEngine(ctx, m.Machine, tlsCfg)
			if err != nil {
				rows[i].Error = err.Error()
				return
			}
			defer en.Close()
			loc, err := en.Inspect(ctx)
			if err != nil {
				rows[i].Error = "engine unreachable"
				return
			}
			rows[i].Engine = loc.Engine
			if loc.Manager {
				nodesOnce.Do(func() { nodes, _ = en.Nodes(ctx) })
			}
			if loc.State != dswarm.LocalNodeStateActive {
				rows[i].Swarm = string(loc.State)
			}
		}()
	}
	wg.Wait()
	byID := map[string]dswarm.Node{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	recorded := map[string]bool{}
	for _, r := range rows {
		recorded[r.NodeID] = true
	}
	for _, n := range nodes {
		if !recorded[n.ID] {
			strays = append(strays, fmt.Sprintf("%s (%s, %s)", n.Description.Hostname, n.ID, n.Status.State))
		}
	}
	sort.Strings(strays)
	for i := range rows {
		n, ok := byID[rows[i].NodeID]
		if !ok {
			if rows[i].Swarm == "" && rows[i].NodeID != "" && len(nodes) > 0 {
				rows[i].Swarm = "not in swarm"
			}
			continue
		}
		rows[i].Swarm = string(n.Status.State)
		if n.ManagerStatus != nil {
			rows[i].Manager = string(n.ManagerStatus.Reachability)
			rows[i].Leader = n.ManagerStatus.Leader
		}
	}
	return rows, strays
}

// pruneScript prints the prune service's last run: when its main process
// exited (unix time), systemd's result, and the "Total reclaimed space" lines
// that run wrote to the journal (one per prune command).
const pruneScript = `u=provision-prune.service
printf 'exit\t%s\n' "$(systemctl show -p ExecMainExitTimestamp --timestamp=unix --value $u 2>/dev/null)"
printf 'result\t%s\n' "$(systemctl show -p Result --value $u 2>/dev/null)"
id=$(systemctl show -p InvocationID --value $u 2>/dev/null)
if [ -n "$id" ]; then
  journalctl -q --no-pager -o cat _SYSTEMD_INVOCATION_ID="$id" 2>/dev/null | sed -n 's/^Total reclaimed space: */reclaimed\t/p'
fi
`

// PruneRun is what a host says about its last prune.
type PruneRun struct {
	LastRun   string // RFC 3339; "" when it never ran since boot
	Result    string // systemd's Result ("success", "exit-code", ...)
	Reclaimed string // "1.2GB", or "120MB + 0B" with the volume prune
}

func lastPrune(ctx context.Context, e *apply.Runner, m *state.Machine) (PruneRun, error) {
	c, err := e.Dial(ctx, m.Machine)
	if err != nil {
		return PruneRun{}, err
	}
	defer c.Close()
	out, err := c.Run(ctx, c.Sudo("sh -s"), strings.NewReader(pruneScript))
	if err != nil {
		return PruneRun{}, err
	}
	return parsePruneRun(out), nil
}

// parsePruneRun reads pruneScript's output.
func parsePruneRun(b []byte) PruneRun {
	var p PruneRun
	var reclaimed []string
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, "\t")
		v = strings.TrimSpace(v)
		switch k {
		case "exit":
			if n, err := strconv.ParseInt(strings.TrimPrefix(v, "@"), 10, 64); err == nil && n > 0 {
				p.LastRun = time.Unix(n, 0).UTC().Format(time.RFC3339)
			}
		case "result":
			p.Result = v
		case "reclaimed":
			if v != "" {
				reclaimed = append(reclaimed, v)
			}
		}
	}
	if p.LastRun == "" {
		// Never ran (since boot): systemd's result then means nothing.
		return PruneRun{}
	}
	p.Reclaimed = strings.Join(reclaimed, " + ")
	return p
}

// pruneColumn is the table's PRUNED cell: "3h ago 1.2GB", "-" when the
// prune never ran, the result when it failed.
func pruneColumn(r NodeStatus, now time.Time) string {
	if r.PruneLastRun == "" {
		if r.PruneResult == "unknown" {
			return "?"
		}
		return "-"
	}
	t, err := time.Parse(time.RFC3339, r.PruneLastRun)
	if err != nil {
		return r.PruneLastRun
	}
	s := ago(now.Sub(t))
	if r.PruneResult != "" && r.PruneResult != "success" {
		return s + " " + r.PruneResult
	}
	if r.PruneReclaimed != "" {
		s += " " + r.PruneReclaimed
	}
	return s
}

func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
}

func newSSH(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ssh FILE NODE [-- COMMAND...]",
		Short: "Open a shell on a node, or run a command there",
		Long: `Log in to a node as the admin user over the same pinned-host-key SSH
connection provision uses. With a command, run it and exit with its code.

Exit status: the remote command's (or shell's) own, whatever it is (128+N
when a signal N killed it); 255 when provision itself fails (bad flags or
spec, locked state, unknown node, no connection), as ssh(1) does. provision's
other exit codes (2, 3, 4) do not apply to this command.`,
		Example: "  provision ssh cluster.hcl demo-manager-1\n  provision ssh cluster.hcl demo-worker-2 -- sudo journalctl -u docker -n 50",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.openRead(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			m, err := pickMachine(l, args[1])
			if err != nil {
				return err
			}
			e := l.runner(g, apply.Discard{})
			c, err := e.Dial(cmd.Context(), m.Machine)
			if err != nil {
				return err
			}
			defer c.Close()
			if len(args) > 2 {
				code, err := c.Stream(cmd.Context(), strings.Join(args[2:], " "), cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				return remoteExit(code)
			}
			err = shell(cmd.Context(), c, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			var ee *comm.ExitError
			if errors.As(err, &ee) {
				return remoteExit(ee.Code)
			}
			return err
		},
	}
	return cmd
}

// remoteExit passes a remote exit status through as provision's own. A
// command killed by a signal has no status (-1): that is provision's 255.
func remoteExit(code int) error {
	switch {
	case code == 0:
		return nil
	case code < 0 || code > 255:
		return fmt.Errorf("the remote command ended without an exit status (killed by a signal?)")
	}
	return &codeError{code: code, err: errSilent, remote: true}
}

// shell runs an interactive login shell with a PTY when stdin is a terminal.
func shell(ctx context.Context, c interface {
	Shell(ctx context.Context, term string, w, h int, in io.Reader, out, errw io.Writer) error
}, in io.Reader, out, errw io.Writer) error {
	f, ok := in.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return c.Shell(ctx, "", 0, 0, in, out, errw)
	}
	old, err := term.MakeRaw(int(f.Fd()))
	if err != nil {
		return err
	}
	defer term.Restore(int(f.Fd()), old)
	w, h, _ := term.GetSize(int(f.Fd()))
	t := os.Getenv("TERM")
	if t == "" {
		t = "xterm-256color"
	}
	return c.Shell(ctx, t, w, h, in, out, errw)
}
