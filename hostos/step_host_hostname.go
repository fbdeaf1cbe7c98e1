package hostos

import (
	"context"
	"fmt"
	"regexp"

	"github.com/provision/provision/provision/comm"
)

// host.hostname: the host is named after its machine. Wipe leaves the name.
func stepHostname() *Step {
	return &Step{
		ID: "host.hostname",
		check: func(ctx context.Context, t *Target) (bool, error) {
			name := t.Config.Node
			if name == "" {
				return true, nil
			}
			if !hostnameRE.MatchString(name) || len(name) > 253 {
				return false, fmt.Errorf("node name %q is not a valid hostname", name)
			}
			return t.Facts.Hostname == name, nil
		},
		apply: setHostname,
	}
}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func setHostname(ctx context.Context, t *Target) error {
	name := comm.Quote(t.Config.Node)
	// hostnamectl replaces /etc/hostname by rename, which fails where it is a
	// bind mount (containers): then write it in place.
	script := `if ! { command -v hostnamectl >/dev/null 2>&1 && timeout 30 hostnamectl set-hostname ` + name + ` 2>/dev/null; }; then
	printf '%s\n' ` + name + ` >/etc/hostname && hostname ` + name + `
fi
grep -Eq "[[:space:]]` + regexp.QuoteMeta(t.Config.Node) + `([[:space:]]|\$)" /etc/hosts || printf '127.0.1.1\t%s\n' ` + name + ` >>/etc/hosts`
	if _, err := t.sudoSh(ctx, script); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	t.Facts.Hostname = t.Config.Node
	return nil
}
