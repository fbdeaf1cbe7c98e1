package hostos_test

import (
	"strings"
	"testing"

	"github.com/provision/provision/hostos"
)

// A host whose sshd listens on another port than 22 (a generic host listed
// as "h:2222") keeps it open: a ruleset opening 22 only locked provision and
// the operator out once the apply's own connection closed.
func TestFirewallKeepsSSHDPorts(t *testing.T) {
	out := "ssh_client\t198.51.100.7\nsshport\t2222\nsshport\t2222\nsshd\tpermitrootlogin\tno\nend\n"
	f, err := hostos.ParseFacts([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.SSHPorts) != 1 || f.SSHPorts[0] != 2222 {
		t.Fatalf("ssh ports %v", f.SSHPorts)
	}
	cfg := baseConfig()
	files, err := hostos.FirewallFiles(cfg, mustFamily(t), f)
	if err != nil {
		t.Fatal(err)
	}
	rs := string(files[0].Content)
	if !strings.Contains(rs, "tcp dport 2222 accept comment \"ssh\"") || strings.Contains(rs, "tcp dport 22 accept") {
		t.Errorf("ruleset does not open sshd's port 2222 (only):\n%s", rs)
	}
	f.SSHPorts = []int{2222, 22}
	files, _ = hostos.FirewallFiles(cfg, mustFamily(t), f)
	if rs := string(files[0].Content); !strings.Contains(rs, "tcp dport { 22, 2222 } accept comment \"ssh\"") {
		t.Errorf("ruleset does not open both ports:\n%s", rs)
	}
}
