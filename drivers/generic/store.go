package generic

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/provision/provision/provision/atomicfile"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Files the driver keeps in <StateDir>/generic.
const (
	knownHostsFile = "known_hosts"   // OpenSSH known_hosts format: keys trusted on first use
	claimsFile     = "machines.json" // the hosts this state has claimed
)

// Claim is one host claimed by this state: what Machines dials again.
type Claim struct {
	Name    string            `json:"name"`
	Cluster string            `json:"cluster"`
	Host    string            `json:"host"`
	Port    int               `json:"port"`
	HostKey string            `json:"host_key"` // the key the host was claimed with (public)
	Tags    map[string]string `json:"tags,omitempty"`
}

// store is the driver's directory. The driver's mutex serializes its use.
type store struct {
	dir string
}

func (s store) path(name string) string { return filepath.Join(s.dir, name) }

// knownKey returns the recorded key for host:port, or "".
func (s store) knownKey(host string, port int) (string, error) {
	data, err := os.ReadFile(s.path(knownHostsFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read recorded host keys: %w", err)
	}
	want := knownhosts.Normalize(joinHostPort(host, port))
	for len(data) > 0 {
		marker, hosts, key, _, rest, err := ssh.ParseKnownHosts(data)
		if err == nil && marker == "" {
			for _, h := range hosts {
				if h == want {
					return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))), nil
				}
			}
		}
		if err != nil {
			// ParseKnownHosts stops at the first bad line; skip past it.
			if i := bytes.IndexByte(data, '\n'); i >= 0 {
				rest = data[i+1:]
			} else {
				rest = nil
			}
		}
		data = rest
	}
	return "", nil
}

// recordKey adds host:port's key to known_hosts (0600), replacing nothing:
// an existing entry for the host wins (the caller checked there was none).
func (s store) recordKey(host string, port int, key string) error {
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(key))
	if err != nil {
		return fmt.Errorf("record host key of %s: %w", joinHostPort(host, port), err)
	}
	line := knownhosts.Line([]string{joinHostPort(host, port)}, pk) + "\n"
	old, err := os.ReadFile(s.path(knownHostsFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read recorded host keys: %w", err)
	}
	if len(old) > 0 && !bytes.HasSuffix(old, []byte("\n")) {
		old = append(old, '\n')
	}
	if len(old) == 0 {
		old = []byte("# Host keys provision trusted on first use (OpenSSH known_hosts format).\n")
	}
	return s.write(knownHostsFile, append(old, line...))
}

// claims reads machines.json (address "host:port" -> claim).
func (s store) claims() (map[string]Claim, error) {
	data, err := os.ReadFile(s.path(claimsFile))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]Claim{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read claimed hosts: %w", err)
	}
	var f struct {
		Hosts map[string]Claim `json:"hosts"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("read claimed hosts %s: %w", s.path(claimsFile), err)
	}
	if f.Hosts == nil {
		f.Hosts = map[string]Claim{}
	}
	return f.Hosts, nil
}

func (s store) saveClaims(c map[string]Claim) error {
	data, err := json.MarshalIndent(struct {
		Hosts map[string]Claim `json:"hosts"`
	}{c}, "", "  ")
	if err != nil {
		return err
	}
	return s.write(claimsFile, append(data, '\n'))
}

// write replaces a file atomically (atomicfile), mode 0600.
func (s store) write(name string, data []byte) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", s.dir, err)
	}
	if err := atomicfile.Write(s.path(name), data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
