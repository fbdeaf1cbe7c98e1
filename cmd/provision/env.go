package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/docker/cli/cli/context/docker"
	"github.com/docker/cli/cli/context/store"
	"github.com/spf13/cobra"

	"github.com/provision/provision/provision/swarm"
)

func newEnv(g *globals) *cobra.Command {
	var (
		shell   string
		context bool
		ctxName string
	)
	cmd := &cobra.Command{
		Use:   "env FILE [NODE]",
		Short: "Print DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH for a node",
		Long: `Print the environment that points the docker CLI (or any Docker SDK) at a
node's engine over mutual TLS. Without NODE, the first manager is used.

With --context, write a docker CLI context instead (named provision-CLUSTER-NODE
unless --context-name says otherwise) into the docker configuration directory
($DOCKER_CONFIG, or ~/.docker): the context holds the endpoint and a copy of
the cluster CA and the operator's client certificate (key 0600). Running it
again updates the context; destroy does not remove it.`,
		Example: "  eval \"$(provision env cluster.hcl)\"\n  provision env cluster.hcl demo-worker-1\n  provision env cluster.hcl --context && docker --context provision-demo-demo-manager-1 node ls",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.openRead(cmd, args[0])
			if err != nil {
				return err
			}
			defer l.close()
			node := ""
			if len(args) == 2 {
				node = args[1]
			}
			m, err := pickMachine(l, node)
			if err != nil {
				return err
			}
			certDir, err := filepath.Abs(l.store.PKIDir())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			host := dockerHost(m.Address)
			if m.EnginePort != 0 { // forwarded by the driver (libvirt user-mode networking)
				host = "tcp://" + net.JoinHostPort(m.Address, strconv.Itoa(m.EnginePort))
			}
			if context || ctxName != "" {
				if ctxName == "" {
					ctxName = "provision-" + l.spec.Name + "-" + m.Name
				}
				dir := dockerConfigDir()
				if err := writeDockerContext(dir, ctxName, host, certDir, fmt.Sprintf("provision cluster %q, node %s", l.spec.Name, m.Name)); err != nil {
					return err
				}
				fmt.Fprintf(out, "docker context %q now points at %s (in %s).\nUse it: docker --context %s node ls   or   docker context use %s\n", ctxName, host, dir, ctxName, ctxName)
				return nil
			}
			fmt.Fprint(out, envScript(shell, host, certDir, m.Name, args[0]))
			return nil
		},
	}
	cmd.Flags().StringVar(&shell, "shell", "sh", "output syntax: sh or fish")
	cmd.PreRunE = func(c *cobra.Command, _ []string) error {
		if shell != "sh" && shell != "fish" {
			return withCode(exitUsage, fmt.Errorf("--shell %q: use sh or fish", shell))
		}
		// A name given is checked before anything is read: an empty one
		// printed the variables instead of making a context, a bad one
		// failed as a run error (exit 1) after loading everything.
		if c.Flags().Changed("context-name") {
			if err := store.ValidateContextName(ctxName); err != nil {
				return withCode(exitUsage, fmt.Errorf("--context-name %q: %w", ctxName, err))
			}
		}
		return nil
	}
	cmd.Flags().BoolVar(&context, "context", false, "create or update a docker CLI context for the node instead of printing variables")
	cmd.Flags().StringVar(&ctxName, "context-name", "", "name of the docker context (implies --context)")
	return cmd
}

// dockerConfigDir is where the docker CLI keeps its configuration and contexts.
func dockerConfigDir() string {
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".docker"
	}
	return filepath.Join(home, ".docker")
}

// contextMeta is the docker CLI's context metadata (its DockerContext type
// serializes the same way).
type contextMeta struct {
	Description string `json:",omitempty"`
}

// writeDockerContext creates or replaces a docker CLI context through the
// CLI's own context store, with the TLS material copied from certDir.
func writeDockerContext(configDir, name, host, certDir, description string) error {
	if err := store.ValidateContextName(name); err != nil {
		return fmt.Errorf("context name %q: %w", name, err)
	}
	cfg := store.NewConfig(
		func() any { return &contextMeta{} },
		store.EndpointTypeGetter(docker.DockerEndpoint, func() any { return &docker.EndpointMeta{} }),
	)
	s := store.New(filepath.Join(configDir, "contexts"), cfg)
	tls := store.EndpointTLSData{Files: map[string][]byte{}}
	for _, f := range []string{"ca.pem", "cert.pem", "key.pem"} {
		b, err := os.ReadFile(filepath.Join(certDir, f))
		if err != nil {
			return fmt.Errorf("docker context %q: %w (has apply finished once?)", name, err)
		}
		tls.Files[f] = b
	}
	meta := store.Metadata{
		Name:     name,
		Metadata: contextMeta{Description: description},
		Endpoints: map[string]any{
			docker.DockerEndpoint: docker.EndpointMeta{Host: host},
		},
	}
	if err := s.CreateOrUpdate(meta); err != nil {
		return fmt.Errorf("docker context %q: %w", name, err)
	}
	if err := s.ResetEndpointTLSMaterial(name, docker.DockerEndpoint, &tls); err != nil {
		return fmt.Errorf("docker context %q: tls files: %w", name, err)
	}
	return nil
}

// dockerHost is the engine's URL: tcp://host:2376, with brackets around an
// IPv6 address.
func dockerHost(address string) string {
	return "tcp://" + net.JoinHostPort(address, strconv.Itoa(swarm.Port))
}

// envScript is what `provision env` prints for the shell: sh (and bash,
// zsh) or fish, every value quoted for that shell.
func envScript(shell, host, certDir, node, specFile string) string {
	if shell == "fish" {
		return fmt.Sprintf("set -gx DOCKER_HOST %s;\nset -gx DOCKER_TLS_VERIFY 1;\nset -gx DOCKER_CERT_PATH %s;\n", fishQuote(host), fishQuote(certDir))
	}
	return fmt.Sprintf("export DOCKER_HOST=%s\nexport DOCKER_TLS_VERIFY=1\nexport DOCKER_CERT_PATH=%s\n# node %s; run: eval \"$(provision env %s %s)\"\n",
		shellQuote(host), shellQuote(certDir), node, shellQuote(specFile), node)
}

// fishQuote quotes for fish: inside single quotes only \\ and \' are special.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
