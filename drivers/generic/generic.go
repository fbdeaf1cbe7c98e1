// Package generic is the bare-metal driver: it uses machines that already
// exist and are reached over SSH as a (non-root) sudo user. It creates
// nothing and deletes nothing: Create claims a host for the cluster and
// Destroy releases it.
//
// The ownership tag lives on the host itself, in /etc/provision/machine.json
// (root, 0644): the cluster ID, the machine name and the other ownership tags.
// A host whose tag names another cluster is refused. The hosts this state
// has claimed are listed in <state dir>/generic/machines.json so that Machines
// can dial them again after a crash; host keys trusted on first use are
// recorded in <state dir>/generic/known_hosts (OpenSSH format, 0600) and
// pinned from then on.
//
// The block:
//
//	driver "generic" {
//	  user               = "admin"              # required: the login user, with passwordless sudo (or root)
//	  key_file           = "~/.ssh/id_ed25519"  # required: that user's private key (mode 0600)
//	  port               = 22                   # for hosts listed without a port
//	  host_keys = {                             # pinned host keys, by "host" (the block's port) or "host:port"
//	    "10.0.0.5" = "ssh-ed25519 AAAA..."
//	  }
//	  trust_on_first_use = true                 # hosts without a pinned key: scan once, record, pin
//	  wipe               = false                # true: destroy also removes the engine and provision's files
//	  bastion {                                 # optional jump host
//	    address  = "203.0.113.9"
//	    port     = 22
//	    user     = "jump"                       # default: the block's user
//	    key_file = "~/.ssh/jump"                # default: the block's key_file
//	    host_key = "ssh-ed25519 AAAA..."        # default: known_hosts / trust on first use
//	  }
//	}
//
// Destroy releases a host: it removes /etc/provision/machine.json and the
// claim. The operating system, the installed packages and the engine stay (the
// machine is not deleted; it left the swarm before Destroy). With wipe = true,
// Destroy also undoes the host steps as their records say
// (hostos.WipeScript): the engine stopped and disabled, /etc/docker and
// every file the steps wrote removed (drop-ins, units, apt settings; not
// the distro's own files they rewrite, such as /etc/issue), systemd, sshd
// and sysctls reloaded; the packages and /var/lib/docker (images,
// volumes) are kept.
//
// The engine logs in with the key in key_file (Machine.SSH.KeyFile), not the
// cluster's generated admin key: the user's key must already be authorized on
// every host.
package generic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/hostos"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/retry"
)

func init() {
	drivers.Register("generic", New)
}

// Paths on the host.
const (
	TagDir  = "/etc/provision"
	TagFile = "/etc/provision/machine.json" // the ownership tag
)

// Driver claims existing hosts. It is safe for concurrent use.
type Driver struct {
	cfg   Config
	name  string
	log   *slog.Logger
	store store

	// createTimeout bounds connecting in Create (the host may be booting);
	// probeTimeout bounds connecting in Machines and Destroy.
	createTimeout, probeTimeout time.Duration

	mu sync.Mutex // serializes the store's read-modify-write

	hostsMu sync.Mutex
	hosts   map[string]*sync.Mutex // "host:port" -> per-host lock
}

var _ drivers.Driver = (*Driver)(nil)

// New decodes a `driver "generic" { ... }` block. It does no network I/O; it
// only looks at the key files' modes.
func New(body hcl.Body, opts drivers.Options) (drivers.Driver, hcl.Diagnostics) {
	cfg, diags := decodeConfig(body, opts.Eval)
	if diags.HasErrors() {
		return nil, diags
	}
	return newDriver(cfg, opts), diags
}

func newDriver(cfg Config, opts drivers.Options) *Driver {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := opts.Name
	if name == "" {
		name = "generic"
	}
	dir := opts.StateDir
	if dir == "" {
		dir = "."
	}
	return &Driver{
		cfg:           cfg,
		name:          name,
		log:           log.With("driver", name),
		store:         store{dir: filepath.Join(dir, "generic")},
		createTimeout: 2 * time.Minute,
		probeTimeout:  30 * time.Second,
		hosts:         map[string]*sync.Mutex{},
	}
}

// tag is the content of /etc/provision/machine.json.
type tag struct {
	Cluster   string            `json:"cluster"`
	Name      string            `json:"name"`
	Driver    string            `json:"driver"`
	Tags      map[string]string `json:"tags"`
	ClaimedAt time.Time         `json:"claimed_at"`
}

func (t *tag) cluster() string {
	if c := t.Tags[drivers.TagCluster]; c != "" {
		return c
	}
	return t.Cluster
}

func (t *tag) machine() string {
	if n := t.Tags[drivers.TagMachine]; n != "" {
		return n
	}
	return t.Name
}

// target is one host, resolved.
type target struct {
	host    string
	port    int
	hostKey string
	keyFile string
	bastion *drivers.Bastion
	// private is the host's own address when it is listed by name: what
	// the swarm advertises and the firewalls admit (they take addresses).
	private string
}

// learnAddress sets t.private for a host listed by name: the address its
// sshd took the connection on ($SSH_CONNECTION's third field), the one the
// operator (or the bastion, in the cluster's network) reaches it at. The
// host's own resolver is no help: Debian maps the host name to 127.0.1.1.
func (t *target) learnAddress(ctx context.Context, c *comm.Client) error {
	if net.ParseIP(t.host) != nil {
		return nil
	}
	out, err := c.Run(ctx, `printf '%s' "$SSH_CONNECTION"`, nil)
	if err != nil {
		return fmt.Errorf("%s: read the host's address: %w", t.addr(), err)
	}
	f := strings.Fields(string(out))
	if len(f) < 3 || net.ParseIP(f[2]) == nil {
		return fmt.Errorf("%s: read the host's address: SSH_CONNECTION is %q", t.addr(), out)
	}
	t.private = net.ParseIP(f[2]).String()
	return nil
}

func (t target) addr() string { return joinHostPort(t.host, t.port) }

// Create claims the host at want.Address for the cluster.
func (d *Driver) Create(ctx context.Context, cluster string, want drivers.MachineSpec) (drivers.Machine, error) {
	if want.Address == "" {
		return drivers.Machine{}, fmt.Errorf("machine %q has no host address: the generic driver uses existing hosts listed in the pool's hosts", want.Name)
	}
	host, port, err := splitAddress(want.Address, d.cfg.Port)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("host %q: %w", want.Address, err)
	}
	addr := joinHostPort(host, port)
	defer d.lockHost(addr)()

	signer, err := loadSigner(d.cfg.KeyFile)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("%s: %w", addr, err)
	}
	bastion, err := d.resolveBastion(ctx)
	if err != nil {
		return drivers.Machine{}, fmt.Errorf("%s: %w", addr, err)
	}
	claims, err := d.claims()
	if err != nil {
		return drivers.Machine{}, err
	}
	t := target{host: host, port: port, keyFile: d.cfg.KeyFile, bastion: bastion}
	if t.hostKey, err = d.hostKey(ctx, want.Address, host, port, claims[addr].HostKey, bastion, true); err != nil {
		return drivers.Machine{}, err
	}
	c, err := d.dial(ctx, t, signer, d.createTimeout)
	if err != nil {
		return drivers.Machine{}, err
	}
	defer c.Close()
	if err := checkSudo(ctx, c, d.cfg.User, addr); err != nil {
		return drivers.Machine{}, err
	}
	if err := t.learnAddress(ctx, c); err != nil {
		return drivers.Machine{}, err
	}
	old, err := readTag(ctx, c, addr)
	if err != nil {
		return drivers.Machine{}, err
	}
	if old != nil && old.cluster() != cluster {
		return drivers.Machine{}, fmt.Errorf("%s: host already belongs to cluster %s (machine %q, %s): release it with that cluster's destroy, or remove %s on the host if that cluster is gone",
			addr, old.cluster(), old.machine(), TagFile, TagFile)
	}
	if old != nil && old.machine() != want.Name {
		d.log.Info("host moves to another machine name in the same cluster", "host", addr, "from", old.machine(), "to", want.Name)
	}

	tags := map[string]string{}
	for k, v := range want.Tags {
		tags[k] = v
	}
	tags[drivers.TagCluster] = cluster
	if tags[drivers.TagMachine] == "" {
		tags[drivers.TagMachine] = want.Name
	}
	// Claim locally first: after a crash between the two writes, Machines
	// still dials the host and finds (or not) the tag.
	if err := d.updateClaims(func(m map[string]Claim) {
		m[addr] = Claim{Name: want.Name, Cluster: cluster, Host: host, Port: port, HostKey: t.hostKey, Tags: tags}
	}); err != nil {
		return drivers.Machine{}, err
	}
	if old == nil || old.machine() != want.Name || !sameTags(old.Tags, tags) {
		nt := tag{Cluster: cluster, Name: want.Name, Driver: "generic", Tags: tags, ClaimedAt: time.Now().UTC().Truncate(time.Second)}
		if old != nil && old.machine() == want.Name {
			nt.ClaimedAt = old.ClaimedAt
		}
		data, err := json.MarshalIndent(nt, "", "  ")
		if err != nil {
			return drivers.Machine{}, err
		}
		if err := comm.Install(ctx, c, TagFile, append(data, '\n'), 0o644, "root"); err != nil {
			return drivers.Machine{}, fmt.Errorf("%s: write ownership tag: %w", addr, err)
		}
		d.log.Info("host claimed", "host", addr, "machine", want.Name)
	}
	return d.machine(want.Name, t, tags), nil
}

func (d *Driver) machine(name string, t target, tags map[string]string) drivers.Machine {
	return drivers.Machine{
		Name:           name,
		ID:             t.addr(),
		Driver:         d.name,
		Address:        t.host,
		PrivateAddress: t.private,
		SSH: drivers.SSHEndpoint{
			User:    d.cfg.User,
			Port:    t.port,
			HostKey: t.hostKey,
			Bastion: t.bastion,
			KeyFile: t.keyFile,
		},
		Tags:  tags,
		State: "running",
	}
}

// Machines dials every host this state has claimed and returns those whose
// tag names the cluster. A host that cannot be reached makes the answer
// incomplete: the error names it (with the machines that were found), so
// that a plan reports it as unknown rather than gone.
func (d *Driver) Machines(ctx context.Context, cluster string) ([]drivers.Machine, error) {
	if cluster == "" {
		return nil, nil
	}
	claims, err := d.claims()
	if err != nil {
		return nil, err
	}
	if len(claims) == 0 {
		return nil, nil
	}
	signer, err := loadSigner(d.cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	bastion, err := d.resolveBastion(ctx)
	if err != nil {
		return nil, err
	}
	type result struct {
		m   *drivers.Machine
		err error
	}
	addrs := sortedKeys(claims)
	results := make([]result, len(addrs))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, addr := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			m, err := d.probe(ctx, addr, claims[addr], signer, bastion)
			results[i] = result{m, err}
		}()
	}
	wg.Wait()
	var out []drivers.Machine
	var errs []error
	for _, r := range results {
		if r.err != nil {
			errs = append(errs, r.err)
		} else if r.m != nil && r.m.Tags[drivers.TagCluster] == cluster {
			out = append(out, *r.m)
		}
	}
	return out, errors.Join(errs...)
}

// probe reads one claimed host's tag; nil without error means no tag.
func (d *Driver) probe(ctx context.Context, addr string, cl Claim, signer ssh.Signer, bastion *drivers.Bastion) (*drivers.Machine, error) {
	host, port := cl.Host, cl.Port
	if host == "" {
		h, p, err := splitAddress(addr, d.cfg.Port)
		if err != nil {
			return nil, fmt.Errorf("claimed host %q: %w", addr, err)
		}
		host, port = h, p
	}
	t := target{host: host, port: port, keyFile: d.cfg.KeyFile, bastion: bastion}
	var err error
	if t.hostKey, err = d.hostKey(ctx, addr, host, port, cl.HostKey, bastion, false); err != nil {
		return nil, err
	}
	c, err := d.dial(ctx, t, signer, d.probeTimeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tg, err := readTag(ctx, c, t.addr())
	if err != nil || tg == nil {
		return nil, err
	}
	if err := t.learnAddress(ctx, c); err != nil {
		return nil, err
	}
	m := d.machine(tg.machine(), t, tg.Tags)
	if m.Tags == nil {
		m.Tags = map[string]string{}
	}
	if m.Tags[drivers.TagCluster] == "" {
		m.Tags[drivers.TagCluster] = tg.cluster()
	}
	return &m, nil
}

// Destroy releases the host: its ownership tag and this state's claim go;
// the machine itself stays (see the package documentation, and wipe).
func (d *Driver) Destroy(ctx context.Context, m drivers.Machine) error {
	host := m.Address
	port := m.SSH.Port
	if port == 0 {
		port = d.cfg.Port
	}
	if host == "" {
		h, p, err := splitAddress(m.ID, d.cfg.Port)
		if err != nil {
			return fmt.Errorf("machine %q has no host address", m.Name)
		}
		host, port = h, p
	}
	addr := joinHostPort(host, port)
	defer d.lockHost(addr)()

	claims, err := d.claims()
	if err != nil {
		return err
	}
	cl, claimed := claims[addr]
	if claimed && cl.Name != m.Name {
		claimed = false // another machine of this state holds it now
	}
	cluster := m.Tags[drivers.TagCluster]
	if cluster == "" {
		cluster = cl.Cluster
	}

	keyFile := m.SSH.KeyFile
	if keyFile == "" {
		keyFile = d.cfg.KeyFile
	}
	t := target{host: host, port: port, keyFile: keyFile, bastion: m.SSH.Bastion, hostKey: m.SSH.HostKey}
	if t.bastion == nil {
		if t.bastion, err = d.resolveBastion(ctx); err != nil {
			return fmt.Errorf("release %s: %w", addr, err)
		}
	}
	if t.hostKey == "" {
		if t.hostKey, err = d.hostKey(ctx, addr, host, port, cl.HostKey, t.bastion, false); err != nil {
			if !claimed {
				return nil // never claimed, or already released
			}
			return fmt.Errorf("release: %w", err)
		}
	}
	signer, err := loadSigner(keyFile)
	if err != nil {
		return fmt.Errorf("release %s: %w", addr, err)
	}
	c, err := d.dial(ctx, t, signer, d.probeTimeout)
	if err != nil {
		if !claimed {
			// Released earlier (the claim goes after the tag): nothing to do.
			d.log.Warn("host not reachable and not claimed by this state: nothing to release", "host", addr, "machine", m.Name, "err", err)
			return nil
		}
		return fmt.Errorf("release: %w", err)
	}
	defer c.Close()
	if err := checkSudo(ctx, c, d.cfg.User, addr); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	tg, err := readTag(ctx, c, addr)
	if err != nil {
		return fmt.Errorf("release: %w", err)
	}
	switch {
	case tg == nil:
		// Already released.
	case (cluster != "" && tg.cluster() != cluster) || tg.machine() != m.Name:
		d.log.Info("host now belongs to another machine: its tag is kept", "host", addr, "machine", m.Name, "owner", tg.machine())
	default:
		if d.cfg.Wipe {
			// What the host steps made, undone as their records say (hostos.WipeScript).
			if _, err := c.Run(ctx, comm.Sudo(c, "sh -s"), strings.NewReader(hostos.WipeScript())); err != nil {
				return fmt.Errorf("release: wipe: %w", err)
			}
			d.log.Info("host wiped", "host", addr)
		}
		release := "rm -f " + TagFile + "; if [ -d " + TagDir + " ]; then rmdir --ignore-fail-on-non-empty " + TagDir + "; fi"
		if _, err := c.Run(ctx, comm.Sudo(c, "sh -c "+comm.Quote(release)), nil); err != nil {
			return fmt.Errorf("release: remove ownership tag: %w", err)
		}
		d.log.Info("host released", "host", addr, "machine", m.Name)
	}
	return d.updateClaims(func(cs map[string]Claim) {
		if c, ok := cs[addr]; ok && c.Name == m.Name {
			delete(cs, addr)
		}
	})
}

// checkSudo proves the login user can run commands as root without a password.
// sudoTimeout bounds checkSudo: a sudo that waits on a directory service
// (sssd, LDAP) or a PAM module that hangs would otherwise hold apply at
// "machines" forever, with no word.
var sudoTimeout = time.Minute

func checkSudo(ctx context.Context, c *comm.Client, user, addr string) error {
	sctx, cancel := context.WithTimeout(ctx, sudoTimeout)
	defer cancel()
	_, err := c.Run(sctx, comm.Sudo(c, "true"), nil)
	if err == nil {
		return nil
	}
	if ctx.Err() == nil && sctx.Err() != nil {
		return fmt.Errorf("sudo on %s did not answer within %s (user %s; a sudo or PAM module waiting on a directory service or DNS?): `sudo -n true` must return at once", addr, sudoTimeout, user)
	}
	var ee *comm.ExitError
	if errors.As(err, &ee) {
		if ee.Code == 127 {
			return fmt.Errorf("sudo is not installed on %s: install it and give user %s passwordless sudo", addr, user)
		}
		return fmt.Errorf("user %s on %s cannot sudo without a password (add \"%s ALL=(ALL) NOPASSWD:ALL\" to /etc/sudoers.d): %s", user, addr, user, ee.Stderr)
	}
	return fmt.Errorf("check sudo on %s: %w", addr, err)
}

// readTag returns the host's ownership tag, nil when there is none.
func readTag(ctx context.Context, c *comm.Client, addr string) (*tag, error) {
	script := "test -e " + TagFile + " || exit 3; cat " + TagFile
	out, err := c.Run(ctx, comm.Sudo(c, "sh -c "+comm.Quote(script)), nil)
	var ee *comm.ExitError
	if errors.As(err, &ee) && ee.Code == 3 {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", TagFile, addr, err)
	}
	var t tag
	if err := json.Unmarshal(out, &t); err != nil {
		return nil, fmt.Errorf("%s on %s is not a provision ownership tag (%v): inspect and remove it by hand", TagFile, addr, err)
	}
	if t.cluster() == "" {
		return nil, fmt.Errorf("%s on %s names no cluster: inspect and remove it by hand", TagFile, addr)
	}
	return &t, nil
}

// dial connects to the target as the block's user.
func (d *Driver) dial(ctx context.Context, t target, signer ssh.Signer, timeout time.Duration) (*comm.Client, error) {
	cfg := comm.Config{
		Host:    t.addr(),
		Address: t.host,
		Port:    t.port,
		User:    d.cfg.User,
		Signer:  signer,
		HostKey: t.hostKey,
		Timeout: timeout,
		Log:     d.log.With("host", t.addr()),
	}
	if b := t.bastion; b != nil {
		bs := signer
		if b.KeyFile != "" && b.KeyFile != t.keyFile {
			s, err := loadSigner(b.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("%s: bastion: %w", t.addr(), err)
			}
			bs = s
		}
		cfg.Bastion = &comm.Config{Host: "bastion " + joinHostPort(b.Address, b.Port), Address: b.Address, Port: b.Port, User: b.User,
			Signer: bs, HostKey: b.HostKey, Timeout: timeout, Log: cfg.Log}
	}
	c, err := comm.Dial(ctx, cfg)
	if errors.Is(err, comm.ErrHostKeyMismatch) {
		d.mu.Lock()
		rec, _ := d.store.knownKey(t.host, t.port)
		d.mu.Unlock()
		if rec != "" && rec == t.hostKey {
			return nil, fmt.Errorf("%w (the expected key was trusted on first use and recorded in %s)", err, d.store.path(knownHostsFile))
		}
	}
	if err != nil && strings.Contains(err.Error(), "unable to authenticate") {
		return nil, fmt.Errorf("%w (is the public half of %s in %s's ~/.ssh/authorized_keys on %s, or the bastion's?)", err, t.keyFile, d.cfg.User, t.addr())
	}
	return c, err
}

// hostKey finds the key to pin for a host: the spec's host_keys, then the
// key the claim was made with, then known_hosts; failing those, when scan is
// set and trust on first use is on, it scans the key and records it.
func (d *Driver) hostKey(ctx context.Context, written, host string, port int, claimed string, bastion *drivers.Bastion, scan bool) (string, error) {
	if k := d.pinned(written, host, port); k != "" {
		return k, nil
	}
	if claimed != "" {
		return claimed, nil
	}
	addr := joinHostPort(host, port)
	d.mu.Lock()
	k, err := d.store.knownKey(host, port)
	d.mu.Unlock()
	if err != nil || k != "" {
		return k, err
	}
	if !d.cfg.TrustOnFirstUse {
		return "", fmt.Errorf("%s: no pinned host key and trust_on_first_use = false: add it to host_keys in the driver block (ssh-keyscan -t ed25519 -p %d %s, checked out of band)", addr, port, host)
	}
	if !scan {
		return "", fmt.Errorf("%s: no pinned or recorded host key", addr)
	}
	k, err = d.scan(ctx, host, port, bastion)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Another Create may have recorded it meanwhile: the first record wins.
	if prev, err := d.store.knownKey(host, port); err != nil {
		return "", err
	} else if prev != "" {
		return prev, nil
	}
	if err := d.store.recordKey(host, port, k); err != nil {
		return "", err
	}
	pk, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(k))
	d.log.Warn("host key trusted on first use and recorded", "host", addr, "fingerprint", ssh.FingerprintSHA256(pk))
	return k, nil
}

// pinned returns the spec's key for the host: by the address as written,
// else by any host_keys entry naming the same host and port (an entry without
// a port means the block's port).
func (d *Driver) pinned(written, host string, port int) string {
	if k, ok := d.cfg.HostKeys[written]; ok {
		return k
	}
	for _, a := range sortedKeys(d.cfg.HostKeys) {
		h, p, err := splitAddress(a, d.cfg.Port)
		if err == nil && sameHost(h, host) && p == port {
			return d.cfg.HostKeys[a]
		}
	}
	return ""
}

// CheckHosts warns about host_keys entries that name none of the hosts the
// pools list (drivers.HostsChecker): such a pin protects nothing, and the
// host meant is trusted on first use (or refused) instead.
func (d *Driver) CheckHosts(hosts []string) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, a := range sortedKeys(d.cfg.HostKeys) {
		h, p, err := splitAddress(a, d.cfg.Port)
		if err != nil {
			continue
		}
		used := false
		for _, l := range hosts {
			lh, lp, err := splitAddress(l, d.cfg.Port)
			used = used || (err == nil && sameHost(h, lh) && p == lp)
		}
		if !used {
			r := d.cfg.hostKeysRange
			then := "trusted on first use"
			if !d.cfg.TrustOnFirstUse {
				then = "refused (trust_on_first_use is off)"
			}
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Host key for no listed host",
				Detail:  fmt.Sprintf("host_keys[%q] matches no host that the pools on this driver list (port %d when none is written): it pins nothing. If the address is mistyped, the host it was meant for is %s.", a, p, then),
				Subject: &r})
		}
	}
	return diags
}

// scan reads the host's key, through the bastion when there is one.
// A host that does not answer yet (booting, sshd restarting) is retried with
// backoff until createTimeout; a bastion key mismatch is not.
func (d *Driver) scan(ctx context.Context, host string, port int, bastion *drivers.Bastion) (string, error) {
	var signer ssh.Signer
	if bastion != nil {
		var err error
		if signer, err = loadSigner(firstNonEmpty(bastion.KeyFile, d.cfg.KeyFile)); err != nil {
			return "", fmt.Errorf("bastion: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, d.createTimeout)
	defer cancel()
	backoff := 250 * time.Millisecond
	for {
		var k string
		var err error
		if bastion == nil {
			k, err = comm.ScanHostKey(ctx, host, port)
		} else {
			k, err = scanVia(ctx, bastion, signer, host, port)
		}
		if err == nil || errors.Is(err, comm.ErrHostKeyMismatch) || strings.Contains(err.Error(), "unable to authenticate") {
			return k, err
		}
		d.log.Debug("host key scan failed, retrying", "host", joinHostPort(host, port), "err", err)
		if retry.Sleep(ctx, backoff) != nil {
			return "", err
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// resolveBastion returns the block's bastion with its host key resolved
// (pinned, recorded, or trusted on first use), nil without a bastion.
func (d *Driver) resolveBastion(ctx context.Context) (*drivers.Bastion, error) {
	b := d.cfg.Bastion
	if b == nil {
		return nil, nil
	}
	out := &drivers.Bastion{Address: b.Address, Port: b.Port, User: b.User, HostKey: b.HostKey, KeyFile: firstNonEmpty(b.KeyFile, d.cfg.KeyFile)}
	if out.HostKey != "" {
		return out, nil
	}
	k, err := d.hostKey(ctx, "", b.Address, b.Port, "", nil, true)
	if err != nil {
		return nil, fmt.Errorf("bastion %s: %w", joinHostPort(b.Address, b.Port), err)
	}
	out.HostKey = k
	return out, nil
}

// loadSigner reads a private key, refusing one that others can read.
func loadSigner(path string) (ssh.Signer, error) {
	if path == "" {
		return nil, errors.New("no key_file")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key_file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key_file %s has mode %04o: other users can read it (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key_file: %w", err)
	}
	s, err := ssh.ParsePrivateKey(data)
	var pm *ssh.PassphraseMissingError
	if errors.As(err, &pm) {
		return nil, fmt.Errorf("key_file %s is protected by a passphrase: provision needs an unencrypted key (keep it 0600)", path)
	}
	if err != nil {
		// The parser's message never contains key material.
		return nil, fmt.Errorf("key_file %s: %w", path, err)
	}
	return s, nil
}

// claims reads machines.json under the driver's lock.
func (d *Driver) claims() (map[string]Claim, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.store.claims()
}

func (d *Driver) updateClaims(f func(map[string]Claim)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.store.claims()
	if err != nil {
		return err
	}
	f(c)
	return d.store.saveClaims(c)
}

func (d *Driver) lockHost(addr string) func() {
	d.hostsMu.Lock()
	m, ok := d.hosts[addr]
	if !ok {
		m = &sync.Mutex{}
		d.hosts[addr] = m
	}
	d.hostsMu.Unlock()
	m.Lock()
	return m.Unlock
}

func sameTags(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}
