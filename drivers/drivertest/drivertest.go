// Package drivertest is the conformance suite every driver's tests run
// against a real backend (a Docker engine, moto, a fake ARM transport, a
// libvirt test connection): what the engine relies on from drivers.Driver.
//
//	admin, adminLine := drivertest.AdminKey(t)
//	drivertest.Run(t, d, drivertest.Config{
//		Cluster:  drivertest.ClusterID(t),
//		Machines: []drivers.MachineSpec{drivertest.Spec(t, cluster, "m1", "manager", adminLine), ...},
//		Admin:    admin,
//	})
package drivertest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/comm"
	"github.com/provision/provision/provision/redact"
)

// Config is what Run needs besides the driver.
type Config struct {
	Cluster  string                // the cluster ID (random per test: see ClusterID)
	Machines []drivers.MachineSpec // created in parallel; at least one (see Spec)
	Admin    ssh.Signer            // the private half of every spec's SSH.PublicKey

	// Sequential creates the machines one after the other instead of at once.
	Sequential bool
	// SkipSSH leaves out the SSH checks (for backends whose machines run no
	// sshd, such as cloud API fakes); everything else is still checked.
	SkipSSH bool
	// Timeout bounds the whole run (default 10 minutes).
	Timeout time.Duration
	// DialTimeout bounds each SSH connect including retries (default 2 minutes).
	DialTimeout time.Duration
	// Log receives comm's debug logs (default: discarded).
	Log *slog.Logger
}

// Run checks the driver's contract on real machines:
//
//   - Create (in parallel) returns a reachable machine whose SSH host key is the
//     pinned one: comm.Dial with the key pinned and the admin signer runs
//     `id -u` and `sudo -n true`;
//   - a second Create with the same name returns the same ID;
//   - Machines lists exactly the created machines, with the ownership tags;
//   - a dial with a wrong pinned key fails with comm.ErrHostKeyMismatch;
//   - Destroy removes each machine, a second Destroy succeeds, and Machines is
//     then empty.
//
// Machines left behind by a failed check are destroyed in t.Cleanup.
func Run(t *testing.T, d drivers.Driver, cfg Config) {
	t.Helper()
	if len(cfg.Machines) == 0 {
		t.Fatal("drivertest: Config.Machines is empty")
	}
	if cfg.Cluster == "" {
		t.Fatal("drivertest: Config.Cluster is empty")
	}
	if cfg.Admin == nil && !cfg.SkipSSH {
		t.Fatal("drivertest: Config.Admin is nil")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Minute
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()

	// Whatever happens, leave nothing behind.
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer ccancel()
		ms, err := d.Machines(cctx, cfg.Cluster)
		if err != nil {
			t.Errorf("cleanup: Machines: %v", err)
			return
		}
		for _, m := range ms {
			if err := d.Destroy(cctx, m); err != nil {
				t.Errorf("cleanup: Destroy %s: %v", m.Name, err)
			}
		}
	})

	created := make([]drivers.Machine, len(cfg.Machines))
	t.Run("Create", func(t *testing.T) {
		errs := make([]error, len(cfg.Machines))
		var wg sync.WaitGroup
		for i, s := range cfg.Machines {
			do := func() {
				created[i], errs[i] = d.Create(ctx, cfg.Cluster, s)
			}
			if cfg.Sequential {
				do()
				continue
			}
			wg.Go(do)
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("Create %s: %v", cfg.Machines[i].Name, err)
			}
		}
		for i, m := range created {
			s := cfg.Machines[i]
			if m.Name != s.Name {
				t.Errorf("Create %s: machine name %q", s.Name, m.Name)
			}
			if m.ID == "" {
				t.Errorf("Create %s: empty ID", s.Name)
			}
			if m.Address == "" {
				t.Errorf("Create %s: empty address", s.Name)
			}
			if m.SSH.User != s.SSH.User {
				t.Errorf("Create %s: SSH user %q, want %q", s.Name, m.SSH.User, s.SSH.User)
			}
			if s.HostKey.Public != "" && !SameKey(m.SSH.HostKey, s.HostKey.Public) {
				t.Errorf("Create %s: pinned host key %q, want the spec's %q", s.Name, m.SSH.HostKey, s.HostKey.Public)
			}
			checkTags(t, "Create", cfg.Cluster, s, m)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	if !cfg.SkipSSH {
		t.Run("SSH", func(t *testing.T) {
			for i, m := range created {
				checkSSH(ctx, t, cfg, cfg.Machines[i], m)
			}
		})
		t.Run("WrongHostKey", func(t *testing.T) {
			wrong, _ := HostKey(t)
			m := created[0]
			c, err := comm.Dial(ctx, dialConfig(cfg, m, wrong.Public))
			if err == nil {
				c.Close()
				t.Fatalf("dial %s with a wrong pinned host key succeeded", m.Name)
			}
			if !errors.Is(err, comm.ErrHostKeyMismatch) {
				t.Fatalf("dial %s with a wrong pinned host key: %v, want comm.ErrHostKeyMismatch", m.Name, err)
			}
		})
	}

	t.Run("CreateAgain", func(t *testing.T) {
		for i, s := range cfg.Machines {
			m, err := d.Create(ctx, cfg.Cluster, s)
			if err != nil {
				t.Fatalf("second Create %s: %v", s.Name, err)
			}
			if m.ID != created[i].ID {
				t.Errorf("second Create %s: ID %q, want the first one's %q (a duplicate was made)", s.Name, m.ID, created[i].ID)
			}
			if m.Address != created[i].Address {
				t.Errorf("second Create %s: address %q, first %q", s.Name, m.Address, created[i].Address)
			}
		}
	})

	t.Run("Machines", func(t *testing.T) {
		ms, err := d.Machines(ctx, cfg.Cluster)
		if err != nil {
			t.Fatalf("Machines: %v", err)
		}
		if len(ms) != len(cfg.Machines) {
			t.Errorf("Machines: %d machines %v, want %d", len(ms), names(ms), len(cfg.Machines))
		}
		byName := map[string]drivers.Machine{}
		for _, m := range ms {
			if _, dup := byName[m.Name]; dup {
				t.Errorf("Machines: %q listed twice", m.Name)
			}
			byName[m.Name] = m
		}
		for i, s := range cfg.Machines {
			m, ok := byName[s.Name]
			if !ok {
				t.Errorf("Machines: %q missing (listed: %v)", s.Name, names(ms))
				continue
			}
			if m.ID != created[i].ID {
				t.Errorf("Machines: %s has ID %q, Create returned %q", s.Name, m.ID, created[i].ID)
			}
			if m.Address != created[i].Address {
				t.Errorf("Machines: %s has address %q, Create returned %q", s.Name, m.Address, created[i].Address)
			}
			if m.SSH.HostKey != "" && !SameKey(m.SSH.HostKey, created[i].SSH.HostKey) {
				t.Errorf("Machines: %s has host key %q, Create returned %q", s.Name, m.SSH.HostKey, created[i].SSH.HostKey)
			}
			if m.SSH.User != s.SSH.User {
				t.Errorf("Machines: %s has user %q, want %q", s.Name, m.SSH.User, s.SSH.User)
			}
			checkTags(t, "Machines", cfg.Cluster, s, m)
		}
		// Another cluster's listing must not see these machines.
		other, err := d.Machines(ctx, cfg.Cluster+"-other")
		if err != nil {
			t.Fatalf("Machines(other cluster): %v", err)
		}
		if len(other) != 0 {
			t.Errorf("Machines(other cluster) = %v, want none", names(other))
		}
	})

	t.Run("Destroy", func(t *testing.T) {
		for _, m := range created {
			if err := d.Destroy(ctx, m); err != nil {
				t.Fatalf("Destroy %s: %v", m.Name, err)
			}
			if err := d.Destroy(ctx, m); err != nil {
				t.Fatalf("second Destroy %s (already gone must succeed): %v", m.Name, err)
			}
		}
		ms, err := d.Machines(ctx, cfg.Cluster)
		if err != nil {
			t.Fatalf("Machines after Destroy: %v", err)
		}
		if len(ms) != 0 {
			t.Errorf("Machines after Destroy: %v, want none", names(ms))
		}
	})
}

func names(ms []drivers.Machine) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

func checkTags(t *testing.T, op, cluster string, s drivers.MachineSpec, m drivers.Machine) {
	t.Helper()
	if got := m.Tags[drivers.TagCluster]; got != cluster {
		t.Errorf("%s %s: tag %s = %q, want %q", op, s.Name, drivers.TagCluster, got, cluster)
	}
	if got := m.Tags[drivers.TagMachine]; got != s.Name {
		t.Errorf("%s %s: tag %s = %q, want %q", op, s.Name, drivers.TagMachine, got, s.Name)
	}
	for k, v := range s.Tags {
		if got := m.Tags[k]; got != v {
			t.Errorf("%s %s: tag %s = %q, want %q", op, s.Name, k, got, v)
		}
	}
}

func dialConfig(cfg Config, m drivers.Machine, pinned string) comm.Config {
	port := m.SSH.Port
	if port == 0 {
		port = 22
	}
	return comm.Config{
		Host:    m.Name,
		Address: m.Address,
		Port:    port,
		User:    m.SSH.User,
		Signer:  cfg.Admin,
		HostKey: pinned,
		Timeout: cfg.DialTimeout,
		Log:     cfg.Log,
	}
}

func checkSSH(ctx context.Context, t *testing.T, cfg Config, s drivers.MachineSpec, m drivers.Machine) {
	t.Helper()
	pinned := s.HostKey.Public
	if pinned == "" {
		pinned = m.SSH.HostKey
	}
	c, err := comm.Dial(ctx, dialConfig(cfg, m, pinned))
	if err != nil {
		t.Errorf("dial %s with the pinned host key: %v", m.Name, err)
		return
	}
	defer c.Close()
	out, err := c.Run(ctx, "id -u", nil)
	if err != nil {
		t.Errorf("%s: id -u: %v", m.Name, err)
		return
	}
	uid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Errorf("%s: id -u printed %q", m.Name, out)
	}
	if (uid == 0) != (s.SSH.User == "root") {
		t.Errorf("%s: logged in as %s with uid %d", m.Name, s.SSH.User, uid)
	}
	if _, err := c.Run(ctx, "sudo -n true", nil); err != nil {
		t.Errorf("%s: sudo -n true (passwordless sudo): %v", m.Name, err)
	}
}

// SameKey reports whether two authorized_keys lines name the same key
// (comments ignored).
func SameKey(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
}

// NewHostKey generates an ed25519 SSH host key: PrivatePEM in OpenSSH PEM
// form, Public in authorized_keys form. It also returns the public key.
func NewHostKey() (drivers.HostKey, ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return drivers.HostKey{}, nil, fmt.Errorf("generate host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return drivers.HostKey{}, nil, fmt.Errorf("marshal host key: %w", err)
	}
	spub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return drivers.HostKey{}, nil, fmt.Errorf("host public key: %w", err)
	}
	return drivers.HostKey{
		PrivatePEM: redact.Secret(pem.EncodeToMemory(block)),
		Public:     strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spub))),
	}, spub, nil
}

// HostKey is NewHostKey for tests.
func HostKey(t testing.TB) (drivers.HostKey, ssh.PublicKey) {
	t.Helper()
	hk, pub, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	return hk, pub
}

// AdminKey generates an ed25519 admin key pair: the signer that logs in and
// its authorized_keys line.
func AdminKey(t testing.TB) (ssh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return signer, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " provision-admin"
}

// ClusterID returns a random cluster ID for one test ("test" + 16 hex digits).
func ClusterID(t testing.TB) string {
	t.Helper()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "test" + hex.EncodeToString(b[:])
}

// Spec returns a complete MachineSpec as the engine would build it: the
// ownership tags, admin user "provision" with adminLine, and a fresh host key.
func Spec(t testing.TB, cluster, name, role, adminLine string) drivers.MachineSpec {
	t.Helper()
	hk, _ := HostKey(t)
	return drivers.MachineSpec{
		Name: name,
		Role: role,
		Pool: role,
		Tags: map[string]string{
			drivers.TagCluster: cluster,
			drivers.TagMachine: name,
			drivers.TagRole:    role,
			drivers.TagPool:    role,
		},
		SSH:     drivers.SSHAccess{User: "provision", PublicKey: adminLine},
		HostKey: hk,
	}
}
