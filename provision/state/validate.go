package state

import (
	"fmt"
	"net"
	"regexp"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Host key sources (Machine.HostKeySource).
const (
	// HostKeyInstalled: provision made the key and the driver placed it on
	// the machine (a container file, cloud-init user-data): it travelled,
	// so it is replaced on the first trusted connection.
	HostKeyInstalled = "installed"
	// HostKeyHost: the key was made on the host by provision's rotation;
	// its private half never left the host.
	HostKeyHost = "host"
	// HostKeyOwn: the host's own key, which provision never had (generic
	// hosts: pinned from the spec, known_hosts or first use).
	HostKeyOwn = "own"
)

var (
	machineNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	clusterIDRe   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	hostRe        = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$`)
)

// Validate checks every record a state file holds before anything uses it:
// a file a person or a broken tool edited must be refused as corrupt, not
// crash a later command or be taken for a machine without a name. It
// returns the first problem, naming the field as a JSON path.
func (s *State) Validate() error {
	if !clusterIDRe.MatchString(s.ClusterID) {
		return fmt.Errorf("cluster_id %q is not a cluster ID", s.ClusterID)
	}
	if s.Name != "" && (len(s.Name) > 30 || !machineNameRe.MatchString(s.Name)) {
		return fmt.Errorf("name %q is not a cluster name", s.Name)
	}
	seen := map[string]int{}
	for i, m := range s.Machines {
		at := fmt.Sprintf("machines[%d]", i)
		if m == nil {
			return fmt.Errorf("%s is null", at)
		}
		if err := m.validate(); err != nil {
			return fmt.Errorf("%s: %w", at, err)
		}
		if j, dup := seen[m.Name]; dup {
			return fmt.Errorf("%s: machine %q is also machines[%d]", at, m.Name, j)
		}
		seen[m.Name] = i
	}
	for k := range s.Settings {
		if k == "" {
			return fmt.Errorf("settings: empty name")
		}
	}
	return nil
}

func (m *Machine) validate() error {
	switch {
	case m.Name == "":
		return fmt.Errorf("no name")
	case !machineNameRe.MatchString(m.Name):
		return fmt.Errorf("name %q is not a machine name", m.Name)
	case m.Role != "manager" && m.Role != "worker":
		return fmt.Errorf("%s: role %q is neither manager nor worker", m.Name, m.Role)
	case m.Status != StatusCreating && m.Status != StatusCreated && m.Status != StatusReady:
		return fmt.Errorf("%s: status %q is not one of %s, %s, %s", m.Name, m.Status, StatusCreating, StatusCreated, StatusReady)
	case m.Driver == "":
		return fmt.Errorf("%s: no driver", m.Name)
	case m.Index < 0:
		return fmt.Errorf("%s: negative index", m.Name)
	case m.SSH.Port < 0 || m.SSH.Port > 65535:
		return fmt.Errorf("%s: ssh port %d", m.Name, m.SSH.Port)
	case m.Address != "" && !validHost(m.Address):
		return fmt.Errorf("%s: address %q is not a host address", m.Name, m.Address)
	case m.PrivateAddress != "" && !validHost(m.PrivateAddress):
		return fmt.Errorf("%s: private_address %q is not a host address", m.Name, m.PrivateAddress)
	case m.HostKeySource != "" && m.HostKeySource != HostKeyInstalled && m.HostKeySource != HostKeyHost && m.HostKeySource != HostKeyOwn:
		return fmt.Errorf("%s: host_key_source %q", m.Name, m.HostKeySource)
	case m.HostKeyNext != "" && m.SSH.HostKey == "":
		return fmt.Errorf("%s: a host key rotation without a current host key", m.Name)
	}
	for field, k := range map[string]string{"ssh.host_key": m.SSH.HostKey, "host_key_next": m.HostKeyNext, "host_key_installed": m.HostKeyInstalled} {
		if k == "" {
			continue
		}
		if _, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil || len(strings.TrimSpace(string(rest))) > 0 {
			return fmt.Errorf("%s: %s is not one public key in authorized_keys form", m.Name, field)
		}
	}
	if b := m.SSH.Bastion; b != nil {
		if !validHost(b.Address) || b.Port < 0 || b.Port > 65535 || b.User == "" {
			return fmt.Errorf("%s: ssh.bastion needs an address, a port and a user", m.Name)
		}
		if b.HostKey != "" {
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(b.HostKey)); err != nil {
				return fmt.Errorf("%s: ssh.bastion.host_key is not a public key", m.Name)
			}
		}
	}
	for id := range m.Steps {
		if id == "" {
			return fmt.Errorf("%s: a step without an ID", m.Name)
		}
	}
	return nil
}

func validHost(h string) bool {
	return net.ParseIP(h) != nil || hostRe.MatchString(h)
}
