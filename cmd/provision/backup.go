package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/provision/provision/provision/apply"
)

func newBackup(g *globals) *cobra.Command {
	var list bool
	cmd := &cobra.Command{
		Use:   "backup FILE",
		Short: "Back up the swarm's raft (services, secrets, configs) into the state directory",
		Long: `Copy /var/lib/docker/swarm from a manager that is not the leader (the
leader when it is the only manager) into <state dir>/backups/raft-<time>-<node>.tar.gz
(0600: it holds the swarm's keys). The manager's engine is stopped for the few
seconds of the copy, so the copy is consistent, unless stopping it would lose
quorum (then the copy is taken hot, and said so). apply takes one by itself
before it replaces, removes or restarts a manager; the last 5 are kept.

With --list, print the backups kept, newest first.`,
		Example: "  provision backup cluster.hcl\n  provision backup cluster.hcl --list",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if list {
				l, err := g.openRead(cmd, args[0])
				if err != nil {
					return err
				}
				defer l.close()
				bs, err := apply.Backups(l.store.Dir())
				if err != nil {
					return err
				}
				for _, b := range bs {
					fmt.Fprintln(cmd.OutOrStdout(), relPath(b))
				}
				return nil
			}
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			e := l.runner(g, g.reporter(cmd, false))
			path, err := e.BackupNow(cmd.Context())
			if err != nil {
				return err
			}
			g.log.Info("raft backup written", "path", path)
			fmt.Fprintln(cmd.OutOrStdout(), relPath(path))
			return nil
		},
	}
	cmd.Flags().BoolVar(&list, "list", false, "list the backups kept")
	return cmd
}

func newRestore(g *globals) *cobra.Command {
	var node string
	var auto bool
	cmd := &cobra.Command{
		Use:   "restore FILE BACKUP",
		Short: "Bring back the swarm's raft from a backup",
		Long: `Put a raft backup (provision backup, or the one apply took) back on one
manager and re-form the swarm from it there: the engine is stopped, its
/var/lib/docker/swarm replaced by the backup's, started again, and the swarm
re-initialised with --force-new-cluster. The swarm's services, secrets,
configs and nodes are then the backup's, and that manager is its only one:
workers reconnect by themselves, the other managers leave the swarm they are
in and join again at the next ` + "`provision apply`" + `, which also brings the
cluster back to the spec. Anything created in the swarm after the backup was
taken is lost.`,
		Example: "  provision restore cluster.hcl .provision/demo/backups/raft-20261201T101500Z-demo-manager-2.tar.gz\n  provision apply cluster.hcl",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.open(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			if err := approve(cmd, auto, fmt.Sprintf("This replaces the swarm of cluster %q with the backup %s", l.spec.Name, relPath(args[1]))); err != nil {
				return err
			}
			e := l.runner(g, g.reporter(cmd, false))
			on, err := e.Restore(cmd.Context(), args[1], node)
			if errors.Is(err, apply.ErrNotAManager) {
				return withCode(exitUsage, err)
			}
			if err != nil {
				return err
			}
			g.log.Info("swarm restored", "host", on, "backup", args[1])
			fmt.Fprintf(cmd.ErrOrStderr(), "Restored the swarm on %s from %s. Next: `provision apply %s` to bring the other managers back and converge.\n", on, relPath(args[1]), args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the manager to restore on (default: the one at the address the backup's manager had)")
	cmd.Flags().BoolVar(&auto, "auto-approve", false, "do not ask")
	return cmd
}
