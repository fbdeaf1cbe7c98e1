// Package state keeps what provision made and applied, one cluster per
// directory:
//
//	<dir>/state.json      this file's State (version, machines, swarm, pki facts)
//	<dir>/state.json.bak  the previous copy
//	<dir>/state.lock      flock held by apply, destroy, backup and restore; its content names the holder
//	<dir>/backups/        raft backups (raft-<time>-<node>.tar.gz, 0600), the last few
//	<dir>/local/          the local driver's engine binding
//	<dir>/pki/            ca.pem, ca-key.pem (0600, never leaves this machine), cert.pem, key.pem (operator client)
//	<dir>/ssh/            id_ed25519 (0600) and id_ed25519.pub: the cluster's admin key
//
// Paths inside State are relative to the directory so it can be moved.
package state

import (
	"sort"
	"time"

	"github.com/provision/provision/drivers"
)

// Version is the state format this binary writes. Older versions are migrated
// on load (migrate.go); newer ones are refused.
const Version = 2

// Machine status values: a machine moves created -> ready; a failed apply
// leaves it at the last status reached, and the next apply resumes from there.
const (
	StatusCreating = "creating" // the create call was started (recorded before the call, so a crash is visible)
	StatusCreated  = "created"  // the driver returned it
	StatusReady    = "ready"    // every host step applied and the node is in the swarm
)

// State is the whole recorded state of one cluster.
type State struct {
	Version   int        `json:"version"`
	ClusterID string     `json:"cluster_id"` // random, stable; the TagCluster value on every resource
	Name      string     `json:"name"`
	Machines  []*Machine `json:"machines"`
	Swarm     Swarm      `json:"swarm"`
	PKI       PKI        `json:"pki"`
	// Settings are the hashes of the cluster-wide settings last applied
	// ("engine", "logging", "prune", "tls", "hardening", ...), for plan's diff.
	Settings map[string]string `json:"settings,omitempty"`
	Updated  time.Time         `json:"updated"`
}

// Machine is one machine as recorded.
type Machine struct {
	drivers.Machine
	Role   string `json:"role"`
	Pool   string `json:"pool"`
	Index  int    `json:"index"`
	Status string `json:"status"`
	// SpecHash is the hash of MadeWith. In a record from state version 1
	// (MadeWith nil) it is the hash of driver, disk, size and address, which
	// plan checks once against the spec and replaces by MadeWith.
	SpecHash string `json:"spec_hash"`
	// MadeWith are the settings the machine was made with that its driver
	// uses (plan.MachineSettings): a change of one means a new machine.
	MadeWith map[string]string `json:"made_with,omitempty"`
	// Generation numbers the machines made under this name (0 or 1: the
	// first); a replacement is the next generation.
	Generation int `json:"generation,omitempty"`
	// Retiring are earlier generations of this machine that still have to
	// leave the swarm and be destroyed: the replacement joins first.
	Retiring []Retiring `json:"retiring,omitempty"`
	// Labels are the node labels provision set on the node (provision.* and
	// the spec's), so that labels removed from the spec are removed from
	// the node, and no others. nil: not recorded yet (state version 1).
	Labels map[string]string `json:"labels,omitempty"`
	// Steps maps a host step ID to the hash of the inputs it was applied with.
	Steps map[string]string `json:"steps,omitempty"`
	// NodeID is the swarm node ID once joined.
	NodeID       string    `json:"node_id,omitempty"`
	CertSerial   string    `json:"cert_serial,omitempty"`
	CertNotAfter time.Time `json:"cert_not_after,omitempty"`
	Engine       string    `json:"engine,omitempty"` // engine version found after install
	// EnginePackage is the engine package's version found after install
	// ("20.10.24+dfsg1-1+deb12u1+b6"): plan compares the spec's pin with it
	// to show an upgrade or a downgrade.
	EnginePackage string `json:"engine_package,omitempty"`
	// HostKeySource says where SSH.HostKey came from: HostKeyInstalled
	// (provision made it and the driver put it on the machine: it is
	// rotated on the first trusted connection), HostKeyHost (made on the
	// host, never left it), HostKeyOwn (the host's own: generic hosts) or
	// "" (recorded before rotation existed).
	HostKeySource string `json:"host_key_source,omitempty"`
	// HostKeyNext is the public half of a key made on the host and pinned
	// (beside SSH.HostKey) before the host switches to it, so that an
	// interrupted rotation never locks provision out.
	HostKeyNext string `json:"host_key_next,omitempty"`
	// HostKeyInstalled is the installed key a rotation replaced: a driver
	// tag that still shows it is expected, any other disagreement is not.
	HostKeyInstalled string `json:"host_key_installed,omitempty"`
}

// Retiring is an earlier generation of a machine on its way out.
type Retiring struct {
	drivers.Machine
	Generation int    `json:"generation,omitempty"`
	NodeID     string `json:"node_id,omitempty"`
	// Destroyed says the machine itself is gone (destroyed or lost): only
	// its swarm node is left to remove.
	Destroyed bool `json:"destroyed,omitempty"`
}

// Gen is the machine's generation (1 for records that predate them).
func (m *Machine) Gen() int { return max(1, m.Generation) }

// Swarm is what provision knows of the swarm it bootstrapped.
type Swarm struct {
	ID string `json:"id,omitempty"`
	// Retired are swarms this cluster had before (every manager was lost
	// and replaced with --replace-missing): a host still in one of them is
	// stale and leaves it to join the current swarm.
	Retired []string `json:"retired,omitempty"`
	// AutolockKey is empty unless autolock is on (not yet supported).
	AutolockKey string `json:"autolock_key,omitempty"`
}

// PKI records the certificates issued (the keys live in pki/).
type PKI struct {
	CASerial       string    `json:"ca_serial,omitempty"`
	CANotAfter     time.Time `json:"ca_not_after,omitempty"`
	ClientSerial   string    `json:"client_serial,omitempty"`
	ClientNotAfter time.Time `json:"client_not_after,omitempty"`
}

// Machine returns the recorded machine with that name, or nil.
func (s *State) Machine(name string) *Machine {
	for _, m := range s.Machines {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// Put inserts or replaces a machine, keeping Machines sorted by name.
func (s *State) Put(m *Machine) {
	for i, old := range s.Machines {
		if old.Name == m.Name {
			s.Machines[i] = m
			return
		}
	}
	s.Machines = append(s.Machines, m)
	sort.Slice(s.Machines, func(i, j int) bool { return s.Machines[i].Name < s.Machines[j].Name })
}

// Remove deletes a machine by name.
func (s *State) Remove(name string) {
	out := s.Machines[:0]
	for _, m := range s.Machines {
		if m.Name != name {
			out = append(out, m)
		}
	}
	s.Machines = out
}
