package hostos_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/provision/provision/hostos"
)

// ufw (iptables-nft) or an operator's own table dropping input by default
// blocks what provision's firewall opens: facts name those chains (apply
// warns), never provision's own table or chains that accept.
func TestFactsFindOtherInputDrop(t *testing.T) {
	chains := `table ip filter {
	chain FORWARD {
		type filter hook forward priority filter; policy drop;
	}
	chain INPUT {
		type filter hook input priority filter; policy drop;
	}
	chain ufw-user-input {
	}
}
table inet provision {
	chain input {
		type filter hook input priority filter; policy drop;
	}
}
table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
	}
}
`
	script := "nft() { cat <<'EOF'\n" + chains + "EOF\n}\n" + hostos.InputDropScript
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	f, err := hostos.ParseFacts([]byte(string(out) + "end\n"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(f.InputDrop, ",") != "ip filter INPUT" {
		t.Errorf("input drop chains %q from:\n%s", f.InputDrop, out)
	}
}
