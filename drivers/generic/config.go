package generic

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"golang.org/x/crypto/ssh"
)

// DefaultPort is the SSH port used when neither the block nor the host
// address names one.
const DefaultPort = 22

// Config is the decoded driver block, defaults applied.
type Config struct {
	User            string            // the sudo user provision logs in as (root works too)
	Port            int               // SSH port for hosts listed without one
	KeyFile         string            // absolute path of the private key for User
	HostKeys        map[string]string // address ("host", "host:port") -> authorized_keys host key, pinned
	TrustOnFirstUse bool              // scan and record unknown host keys once, then pin them
	Wipe            bool              // Destroy also removes the engine and provision's files
	Bastion         *BastionConfig

	hostKeysRange hcl.Range // where host_keys is written, for CheckHosts
}

// BastionConfig is the jump host of the block.
type BastionConfig struct {
	Address string
	Port    int
	User    string
	KeyFile string // absolute; "" means the block's key_file
	HostKey string // pinned; "" means known_hosts / trust on first use
}

type rawConfig struct {
	User            string            `hcl:"user"`
	Port            *int              `hcl:"port,optional"`
	KeyFile         string            `hcl:"key_file"`
	HostKeys        map[string]string `hcl:"host_keys,optional"`
	TrustOnFirstUse *bool             `hcl:"trust_on_first_use,optional"`
	Wipe            *bool             `hcl:"wipe,optional"`
	Bastion         *rawBastion       `hcl:"bastion,block"`
}

type rawBastion struct {
	Address string  `hcl:"address"`
	Port    *int    `hcl:"port,optional"`
	User    *string `hcl:"user,optional"`
	KeyFile *string `hcl:"key_file,optional"`
	HostKey *string `hcl:"host_key,optional"`
}

// decodeConfig decodes and checks the block. It reads the key files' modes
// (local files only, no network) and reports every problem with the range of
// the attribute at fault.
func decodeConfig(body hcl.Body, ctx *hcl.EvalContext) (Config, hcl.Diagnostics) {
	var raw rawConfig
	// Unknown attributes and blocks are reported by DecodeBody with their ranges.
	diags := gohcl.DecodeBody(body, ctx, &raw)
	if diags.HasErrors() {
		return Config{}, diags
	}

	schema, _ := gohcl.ImpliedBodySchema(&raw)
	content, _, _ := body.PartialContent(schema)
	rng := func(c *hcl.BodyContent, b hcl.Body, name string) *hcl.Range {
		if a, ok := c.Attributes[name]; ok {
			r := a.Expr.Range()
			return &r
		}
		r := b.MissingItemRange()
		return &r
	}
	bad := func(subject *hcl.Range, summary, detail string) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: subject})
	}
	warn := func(subject *hcl.Range, summary, detail string) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: summary, Detail: detail, Subject: subject})
	}

	c := Config{
		User:            raw.User,
		Port:            DefaultPort,
		HostKeys:        map[string]string{},
		TrustOnFirstUse: raw.TrustOnFirstUse == nil || *raw.TrustOnFirstUse,
		Wipe:            raw.Wipe != nil && *raw.Wipe,
	}
	if raw.Port != nil {
		c.Port = *raw.Port
	}
	if strings.TrimSpace(c.User) == "" || strings.ContainsAny(c.User, " \t\r\n:@/,\x00") || strings.IndexFunc(c.User, unicode.IsControl) >= 0 {
		bad(rng(content, body, "user"), "Invalid user", fmt.Sprintf("user %q must name the existing login user provision connects as (a sudo user such as \"admin\").", c.User))
	}
	if c.Port < 1 || c.Port > 65535 {
		bad(rng(content, body, "port"), "Invalid port", fmt.Sprintf("port %d is outside 1-65535.", c.Port))
	}
	var kd hcl.Diagnostics
	c.KeyFile, kd = checkKeyFile(raw.KeyFile, "key_file", rng(content, body, "key_file"))
	diags = append(diags, kd...)

	c.hostKeysRange = *rng(content, body, "host_keys")
	// Host keys: sorted so diagnostics come in a stable order.
	addrs := make([]string, 0, len(raw.HostKeys))
	for a := range raw.HostKeys {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	for _, a := range addrs {
		k := strings.TrimSpace(raw.HostKeys[a])
		if _, _, err := splitAddress(a, c.Port); err != nil {
			bad(rng(content, body, "host_keys"), "Invalid host_keys address", fmt.Sprintf("host_keys key %q: %v. Write \"10.0.0.5\", \"host.example\" or \"host:2222\".", a, err))
			continue
		}
		if err := checkHostKey(k); err != nil {
			bad(rng(content, body, "host_keys"), "Invalid host key", fmt.Sprintf("host_keys[%q]: %v. Give the host's public key in authorized_keys form, as in /etc/ssh/ssh_host_ed25519_key.pub: \"ssh-ed25519 AAAA...\".", a, err))
			continue
		}
		c.HostKeys[a] = k
	}

	if raw.Bastion != nil {
		rb := raw.Bastion
		bb := content.Blocks.OfType("bastion")[0].Body
		bschema, _ := gohcl.ImpliedBodySchema(rb)
		bcontent, _, _ := bb.PartialContent(bschema)
		b := &BastionConfig{Address: strings.TrimSpace(rb.Address), Port: DefaultPort, User: c.User}
		if rb.User != nil {
			b.User = *rb.User
		}
		if rb.Port != nil {
			b.Port = *rb.Port
		}
		if b.Address == "" {
			bad(rng(bcontent, bb, "address"), "Invalid bastion address", "bastion.address must name the jump host.")
		} else if h, p, err := splitAddress(b.Address, b.Port); err != nil {
			bad(rng(bcontent, bb, "address"), "Invalid bastion address", fmt.Sprintf("bastion.address %q: %v.", b.Address, err))
		} else {
			b.Address, b.Port = h, p
		}
		if b.Port < 1 || b.Port > 65535 {
			bad(rng(bcontent, bb, "port"), "Invalid bastion port", fmt.Sprintf("port %d is outside 1-65535.", b.Port))
		}
		if strings.TrimSpace(b.User) == "" || strings.ContainsAny(b.User, " \t\n:@/") {
			bad(rng(bcontent, bb, "user"), "Invalid bastion user", fmt.Sprintf("bastion.user %q must name the login user on the jump host.", b.User))
		}
		if rb.KeyFile != nil {
			b.KeyFile, kd = checkKeyFile(*rb.KeyFile, "bastion.key_file", rng(bcontent, bb, "key_file"))
			diags = append(diags, kd...)
		}
		if rb.HostKey != nil {
			b.HostKey = strings.TrimSpace(*rb.HostKey)
			if err := checkHostKey(b.HostKey); err != nil {
				bad(rng(bcontent, bb, "host_key"), "Invalid bastion host key", fmt.Sprintf("bastion.host_key: %v. Give the jump host's public key in authorized_keys form.", err))
			}
		}
		c.Bastion = b
	}
	if !c.TrustOnFirstUse && len(c.HostKeys) == 0 {
		warn(rng(content, body, "trust_on_first_use"), "No host keys to trust",
			"trust_on_first_use = false and host_keys is empty: only hosts whose keys were recorded earlier (known_hosts in the state directory) can be used.")
	}
	return c, diags
}

// checkKeyFile expands ~, makes the path absolute and checks what can be
// checked without it being required to exist: validate and plan run on
// machines that do not hold the key, so a missing file is a warning here and
// an error when a host is contacted.
func checkKeyFile(p, attr string, subject *hcl.Range) (string, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	if strings.TrimSpace(p) == "" {
		return "", hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Missing key file",
			Detail: attr + " must name the private key provision logs in with (such as \"~/.ssh/id_ed25519\").", Subject: subject}}
	}
	abs, err := absPath(p)
	if err != nil {
		return "", hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid key file", Detail: fmt.Sprintf("%s %q: %v.", attr, p, err), Subject: subject}}
	}
	fi, err := os.Stat(abs)
	switch {
	case os.IsNotExist(err):
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Key file not found",
			Detail: fmt.Sprintf("%s %s does not exist: apply and destroy need it to log in to the hosts.", attr, abs), Subject: subject})
	case err != nil:
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Key file not readable", Detail: fmt.Sprintf("%s %s: %v.", attr, abs, err), Subject: subject})
	case fi.IsDir():
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid key file", Detail: fmt.Sprintf("%s %s is a directory, not a private key.", attr, abs), Subject: subject})
	case fi.Mode().Perm()&0o077 != 0:
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Private key readable by others",
			Detail: fmt.Sprintf("%s %s has mode %04o: other users can read it, and provision refuses to use it. Run: chmod 600 %s", attr, abs, fi.Mode().Perm(), abs), Subject: subject})
	}
	return abs, diags
}

func absPath(p string) (string, error) {
	if p == "~" || strings.HasPrefix(p, "~/") {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("expand ~: %w", err)
		}
		p = filepath.Join(home, strings.TrimPrefix(p, "~"))
	}
	return filepath.Abs(p)
}

func checkHostKey(k string) error {
	if k == "" {
		return fmt.Errorf("empty key")
	}
	pk, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(k))
	if err != nil {
		return fmt.Errorf("not an SSH public key: %v", err)
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return fmt.Errorf("more than one key")
	}
	if strings.HasPrefix(pk.Type(), "ssh-dss") {
		return fmt.Errorf("DSA host keys are not accepted")
	}
	return nil
}

// splitAddress parses "host", "host:port", "[v6]:port" or a bare IPv6
// address, using defPort when none is given.
// sameHost reports whether two host parts name one host: equal addresses
// (in any notation), or names equal but for case and a trailing dot.
func sameHost(a, b string) bool {
	if x, err := netip.ParseAddr(a); err == nil {
		y, err := netip.ParseAddr(b)
		return err == nil && x.Unmap() == y.Unmap()
	}
	return strings.EqualFold(strings.TrimSuffix(a, "."), strings.TrimSuffix(b, "."))
}

func splitAddress(a string, defPort int) (string, int, error) {
	a = strings.TrimSpace(a)
	if a == "" {
		return "", 0, fmt.Errorf("empty address")
	}
	host, port := a, defPort
	if h, p, err := net.SplitHostPort(a); err == nil {
		n, perr := strconv.Atoi(p)
		if perr != nil || n < 1 || n > 65535 {
			return "", 0, fmt.Errorf("invalid port %q", p)
		}
		host, port = h, n
	} else if strings.Count(a, ":") == 1 {
		return "", 0, fmt.Errorf("invalid address: %v", err)
	} else if strings.HasPrefix(a, "[") && strings.HasSuffix(a, "]") {
		host = a[1 : len(a)-1]
	}
	if host == "" || strings.ContainsAny(host, " \t\n/@[]") {
		return "", 0, fmt.Errorf("invalid host %q", host)
	}
	return host, port, nil
}
