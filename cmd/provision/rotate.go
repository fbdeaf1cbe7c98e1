package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/provision/provision/provision/apply"
	"github.com/provision/provision/provision/plan"
	"github.com/provision/provision/provision/state"
)

func newRotate(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Renew certificates, rotate the cluster CA, the swarm's CA or its unlock key",
		Long: `Each rotation keeps the cluster serving: engines whose certificates change
restart in rolling batches (managers one at a time, workers a quarter at a
time), each node drained first and active again once it is back, and every
step is recorded in state, so an interrupted rotation is finished by running
the same command again (or apply).`,
	}
	cmd.AddCommand(newRotateCerts(g), newRotateCA(g), newRotateSwarmCA(g), newRotateUnlockKey(g))
	for _, c := range cmd.Commands() {
		c.Args = usage(c.Args) // a wrong argument count is a usage error (exit 2)
	}
	return cmd
}

// rotateApply runs one apply for a rotation: the plan must not replace or
// remove machines (that is apply's to do, with its confirmation).
func rotateApply(ctx context.Context, g *globals, l *loaded, file string, cmd *cobra.Command, jsonOut bool, command string) error {
	out := cmd.ErrOrStderr() // human text; --json events go to stdout
	p := plan.Build(l.spec, l.state, l.observe(ctx, g.log))
	if p.Missing != nil {
		return withCode(exitRefused, fmt.Errorf("%w: %s. Nothing was changed", apply.ErrMissing, p.Missing.Message))
	}
	if p.Destructive() {
		return withCode(exitRefused, fmt.Errorf("the plan replaces or removes machines: run `provision apply %s` first, then rotate", file))
	}
	rep := g.reporter(cmd, jsonOut)
	if jsonOut {
		g.planEvent(rep, l, p) // each rollout's events start with its plan, as apply's do
	}
	stats, err := l.runner(g, rep).Apply(ctx, p)
	next := summary(out, stats, file, err)
	if jsonOut {
		// Each rollout ends with its summary event, as apply's does.
		summaryEvent(rep, command, stats, next, err)
	}
	return err
}

func newRotateCerts(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "certs FILE",
		Short: "Reissue every node's engine certificate and the operator's client certificate now",
		Long: `Reissue every node's TLS server certificate and the operator's client
certificate, whatever their expiry (apply renews them by itself inside the
spec's renewal window, tls.renew_before). Engines restart to load them:
drained first, in rolling batches. Interrupted, the same command (or apply)
reissues only what is still older than the rotation.

The certificates it replaces stay valid until they expire: the engine has
no revocation list. After a client or node key has leaked, run
` + "`provision rotate ca`" + `, which makes every certificate of the old CA useless.`,
		Example: "  provision rotate certs cluster.hcl",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			if err := l.requireMachines(); err != nil {
				return err
			}
			if l.state.PKI.ReissueBefore.IsZero() {
				l.state.PKI.ReissueBefore = time.Now().UTC()
				if err := l.store.Save(l.state); err != nil {
					return err
				}
			}
			err = rotateApply(cmd.Context(), g, l, args[0], cmd, jsonOut, "rotate certs")
			if err == nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "The replaced certificates stay valid until they expire (the engine has no revocation list): if a key leaked, run `provision rotate ca "+args[0]+"`.")
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "progress as NDJSON events on stdout (human text stays on stderr)")
	return g.jsonEvents(cmd, "rotate certs", &jsonOut)
}

func newRotateCA(g *globals) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "ca FILE",
		Short: "Replace the cluster CA without downtime",
		Long: `Replace the cluster's CA in three phases, each rolled out to every node
(engines restart, drained first, in rolling batches) before the next:

  trust    a new CA is made; engines and the operator's ca.pem trust both
  reissue  every node's certificate and the operator's client certificate
           come from the new CA (server certificates carry it cross-signed
           by the old one, for clients that still trust only the old CA)
  drop     the new CA replaces the old one everywhere

Clients that use the state directory's pki/ (provision env, docker with
DOCKER_CERT_PATH) keep working throughout. The phase is recorded in state:
run the command again after an interruption and it goes on from there.`,
		Example: "  provision rotate ca cluster.hcl",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			if err := l.requireMachines(); err != nil {
				return err
			}
			out := cmd.ErrOrStderr()
			if l.state.PKI.Rotation == "" {
				l.state.PKI.Rotation = state.RotationTrust
				if err := l.store.Save(l.state); err != nil {
					return err
				}
			}
			// One apply per phase; each one that converges moves the
			// rotation on (apply records it).
			for i := 0; i < 3 && l.state.PKI.Rotation != ""; i++ {
				phase := l.state.PKI.Rotation
				fmt.Fprintf(out, "\nCA rotation, phase %s:\n", phase)
				if err := rotateApply(cmd.Context(), g, l, args[0], cmd, jsonOut, "rotate ca"); err != nil {
					return fmt.Errorf("CA rotation stopped in phase %s (run `provision rotate ca %s` again to go on): %w", phase, args[0], err)
				}
				if l.state.PKI.Rotation == phase {
					return fmt.Errorf("CA rotation: phase %s did not finish on every host; run `provision rotate ca %s` again", phase, args[0])
				}
			}
			fmt.Fprintf(out, "CA rotation finished: CA %s.\n", l.state.PKI.CASerial)
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "progress as NDJSON events on stdout (human text stays on stderr)")
	return g.jsonEvents(cmd, "rotate ca", &jsonOut)
}

func newRotateSwarmCA(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "swarm-ca FILE",
		Short: "Rotate the swarm's own root CA (docker swarm ca --rotate)",
		Long: `Make the swarm generate a new root CA for its node certificates (the
mutual TLS between swarm members, not the engines' 2376 certificates) and
wait until every node holds a certificate from it. The swarm does this
without restarting anything. The node certificates' lifetime is the spec's
swarm.node_cert_expiry, set by apply.`,
		Example: "  provision rotate swarm-ca cluster.hcl",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := positiveDuration(cmd, "timeout", timeout); err != nil {
				return err
			}
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			e := l.runner(g, g.reporter(cmd, false))
			if err := e.RotateSwarmCA(cmd.Context(), timeout); err != nil {
				return err
			}
			g.log.Info("swarm root CA rotated")
			fmt.Fprintln(cmd.ErrOrStderr(), "swarm root CA rotated: every node holds a certificate from the new root")
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to wait for every node to be reissued")
	return cmd
}

func newRotateUnlockKey(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unlock-key FILE",
		Short: "Rotate the swarm's unlock key (autolock) and keep the new one",
		Long: `Make the swarm replace the managers' unlock key (docker swarm unlock-key
--rotate) and keep the new one in <state dir>/swarm/unlock-keys (0600).
Older keys stay in the file: a raft backup taken before the rotation needs
the key of its time. The key is never printed (provision unlock --show-key).`,
		Example: "  provision rotate unlock-key cluster.hcl",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			e := l.runner(g, g.reporter(cmd, false))
			if err := e.RotateUnlockKey(cmd.Context()); err != nil {
				return err
			}
			g.log.Info("swarm unlock key rotated")
			fmt.Fprintln(cmd.ErrOrStderr(), "swarm unlock key rotated and kept in the state directory")
			return nil
		},
	}
}

func newUnlock(g *globals) *cobra.Command {
	var showKey bool
	cmd := &cobra.Command{
		Use:   "unlock FILE",
		Short: "Unlock managers that restarted under autolock; --show-key prints the unlock key",
		Long: `A manager of a swarm with autolock (swarm { autolock = true }) that
restarts stays locked until it is given the unlock key; apply unlocks every
locked manager it meets, and so does this command without changing anything
else. The keys are kept in <state dir>/swarm/unlock-keys (0600).

--show-key prints the current key on stdout (for docker swarm unlock on a
host, or a safe). Nothing else ever prints it.`,
		Example: "  provision unlock cluster.hcl\n  provision unlock cluster.hcl --show-key",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.openRead(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			if showKey {
				keys, err := l.store.UnlockKeys()
				if err != nil {
					return err
				}
				if len(keys) == 0 {
					return errors.New("no unlock key is kept: autolock was never on for this cluster (or apply has not run since)")
				}
				fmt.Fprintln(cmd.ErrOrStderr(), "The swarm unlock key (a secret: whoever has it and a manager's disk has the raft):")
				fmt.Fprintln(cmd.OutOrStdout(), string(keys[0]))
				return nil
			}
			// Without machines there is nothing to unlock, and the runner
			// would make the cluster's admin key in the state directory
			// without the lock this command does not take.
			if err := l.requireMachines(); err != nil {
				return err
			}
			res, err := l.runner(g, g.reporter(cmd, false)).Unlock(cmd.Context())
			if err != nil {
				return err
			}
			var errs []error
			for _, u := range res {
				switch {
				case u.Err != nil:
					g.log.Warn("unlock failed", "host", u.Host, "err", u.Err)
					errs = append(errs, u.Err)
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %v\n", u.Host, u.Err)
				case u.Locked:
					g.log.Info("unlocked", "host", u.Host)
					fmt.Fprintf(cmd.OutOrStdout(), "%s: unlocked\n", u.Host)
				default:
					fmt.Fprintf(cmd.OutOrStdout(), "%s: not locked\n", u.Host)
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&showKey, "show-key", false, "print the current unlock key on stdout")
	return cmd
}
