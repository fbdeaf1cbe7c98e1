package hostos

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/provision/provision/provision/comm"
)

// probedCommands are the commands whose presence GatherFacts reports.
var probedCommands = []string{"sshd", "nft", "hostnamectl", "cloud-init", "systemctl", "auditctl", "augenrules", "apt-get", "dockerd", "sysctl"}

// factsScript is the POSIX sh program GatherFacts runs as root; $1 is the
// SSH client address, $2 the login user and $3 the whole $SSH_CONNECTION
// (expanded by the login shell, since sudo drops the environment). Every line is "kind<TAB>fields...", except the sections
// that carry a command's own output between a header and an end line
// (files: sha256sum; units: systemctl show; swarmpem: the certificate).
// Paths are appended.
//
// It spawns few processes (a no-op apply is this one call per host, and on a
// busy machine every exec costs): builtins read os-release, the hostname,
// the container type and the swarm certificate; one sha256sum hashes every
// managed file, one dpkg-query lists the packages, one systemctl show
// reports every unit. dockerd --version runs only when the package database
// or the binary changed since it last ran (its answer is kept in /run).
const factsScript = `export LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
printf 'ssh_client\t%s\n' "$1"
` + sshdEffectiveScript + `
if [ -r /etc/os-release ]; then
	while IFS= read -r l || [ -n "$l" ]; do printf 'os\t%s\n' "$l"; done </etc/os-release
fi
printf 'arch\t'; dpkg --print-architecture 2>/dev/null || echo
h=
read -r h 2>/dev/null </proc/sys/kernel/hostname || read -r h 2>/dev/null </etc/hostname || true
printf 'hostname\t%s\n' "$h"
printf 'addrs\t%s\n' "$(hostname -I 2>/dev/null)"
for c in $PROBE; do
	p=$(command -v "$c" 2>/dev/null) && printf 'cmd\t%s\t%s\n' "$c" "$p"
done
set --
for f in $FILES; do
	if [ -f "$f" ]; then set -- "$@" "$f"; fi
done
printf 'files\n'
if [ $# -gt 0 ]; then sha256sum -- "$@" 2>/dev/null; fi
printf 'files-end\nmodes\n'
if [ $# -gt 0 ]; then stat -c '%a %n' -- "$@" 2>/dev/null; fi
printf 'modes-end\n'
dpkg-query -W -f='pkg\t${db:Status-Abbrev}\t${Package}\t${Version}\n' 2>/dev/null
if command -v systemctl >/dev/null 2>&1; then
	printf 'units\t%s\n' "$UNITS"
	systemctl show -p Id -p ActiveState -p UnitFileState $UNITS 2>/dev/null
	printf '\nunits-end\n'
fi
if d=$(command -v dockerd 2>/dev/null); then
	ev=/run/provision/engine-version v=
	if [ -s $ev ] && ! [ /var/lib/dpkg/status -nt $ev ] && ! [ "$d" -nt $ev ]; then read -r v <$ev || v=; fi
	if [ -z "$v" ]; then
		v=$(dockerd --version 2>/dev/null)
		if [ -n "$v" ] && mkdir -p /run/provision 2>/dev/null; then printf '%s\n' "$v" >$ev 2>/dev/null || true; fi
	fi
	printf 'engine\t%s\n' "$v"
fi
if [ -r /run/systemd/container ]; then
	v=; read -r v </run/systemd/container || true
	printf 'virt\t%s\n' "$v"
elif command -v systemd-detect-virt >/dev/null 2>&1; then
	printf 'virt\t%s\n' "$(systemd-detect-virt -c 2>/dev/null)"
elif [ -f /.dockerenv ] || [ -f /run/.containerenv ]; then
	printf 'virt\tcontainer\n'
fi
if command -v cloud-init >/dev/null 2>&1; then
	printf 'cloudinit\t%s\n' "$(cloud-init status 2>/dev/null | sed -n 's/^status: *//p')"
fi
# The ESP data path encrypted overlay networks use (xfrm, esp4, AES-GCM):
# a transport-mode state in a throwaway network namespace.
if command -v ip >/dev/null 2>&1 && command -v unshare >/dev/null 2>&1; then
	if unshare -n ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 reqid 1 mode transport aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128 >/dev/null 2>&1; then
		printf 'esp\tyes\n'
	else
		printf 'esp\tno\n'
	fi
fi
c=/var/lib/docker/swarm/certificates/swarm-node.crt
if [ -r "$c" ]; then
	printf 'swarmpem\n'
	while IFS= read -r l || [ -n "$l" ]; do printf '%s\n' "$l"; done <"$c"
	printf 'swarmpem-end\n'
fi
` + inputDropScript + `
{ ` + busyScript + `; } | while IFS= read -r l; do printf 'busy\t%s\n' "$l"; done
printf 'end\n'
`

// loginArgsShell runs a script from stdin as root with the arguments
// factsScript and sshdEffectiveScript read: the SSH client address, the
// login user and the whole $SSH_CONNECTION, expanded by the login shell
// before sudo drops the environment.
const loginArgsShell = `sh -s -- "${SSH_CONNECTION%% *}" "$USER" "$SSH_CONNECTION"`

// sshdEffectiveScript prints "sshd<TAB>key<TAB>value" for each of the
// settings harden.ssh enforces (SSHDEnforced) as sshd would apply them to
// a login of this user from this address ($1 address, $2 user, $3
// $SSH_CONNECTION: sshd -T -C, so Match blocks count as well as every
// Include, whatever its order), and "sshport<TAB>n" for each port sshd
// listens on and the one this connection came in on (the firewall keeps
// them open). Nothing when sshd or the user is unknown.
const sshdEffectiveScript = `if [ -n "$2" ] && command -v sshd >/dev/null 2>&1; then
	spec="user=$2"
	[ -z "$1" ] || spec="$spec,host=$1,addr=$1"
	set -- $3
	[ -z "$3" ] || spec="$spec,laddr=$3"
	[ -z "$4" ] || spec="$spec,lport=$4"
	mkdir -p /run/sshd 2>/dev/null
	[ -z "$4" ] || printf 'sshport\t%s\n' "$4"
	sshd -T -C "$spec" 2>/dev/null | while read -r k v; do
		case " $SSHD_KEYS " in *" $k "*) printf 'sshd\t%s\t%s\n' "$k" "$v" ;; esac
		[ "$k" != port ] || printf 'sshport\t%s\n' "$v"
	done
fi`

// inputDropScript prints "fwdrop<TAB>family table chain" for each input
// base chain outside provision's table whose policy is drop.
const inputDropScript = `# Other input filters that drop by default (ufw, an operator's own table):
# a packet must pass every input base chain, so provision's openings count
# only where these let them through as well.
if command -v nft >/dev/null 2>&1; then
	tb= ch=
	nft list chains 2>/dev/null | while read -r a b c d; do
		case "$a" in
		table) tb="$b $c" ;;
		chain) ch=$b ;;
		type) case "$a $b $c $d" in *"hook input"*"policy drop"*) [ "$tb" = "inet provision" ] || printf 'fwdrop\t%s %s\n' "$tb" "$ch" ;; esac ;;
		esac
	done
fi`

// busyScript lists running package managers, one "pid cmdline" a line. The
// unattended-upgrades shutdown helper (always running, comm
// "unattended-upgr") is not one.
const busyScript = `pgrep -a -x 'apt|apt-get|aptitude|dpkg' 2>/dev/null; pgrep -a -f '^/usr/bin/python3 /usr/bin/unattended-upgrade( |$)' 2>/dev/null`

// GatherFacts learns everything the steps' Checks need in one remote call:
// a shell script on stdin, run as root (root-only files can be hashed).
func GatherFacts(ctx context.Context, c Comm, paths []string) (*Facts, error) {
	var script strings.Builder
	fmt.Fprintf(&script, "PROBE=%s\nSSHD_KEYS=%s\nUNITS=%s\nFILES=%s\n",
		comm.Quote(strings.Join(probedCommands, " ")),
		comm.Quote(strings.Join(SSHDEnforced, " ")),
		comm.Quote(strings.Join(ManagedUnits(), " ")),
		comm.Quote(strings.Join(paths, " ")))
	for _, p := range paths {
		if strings.ContainsAny(p, " \t\n*?[") {
			return nil, fmt.Errorf("gather facts: managed path %q has shell-special characters", p)
		}
	}
	script.WriteString("set -f\n") // FILES and UNITS are split on spaces, never globbed
	script.WriteString(factsScript)
	// The login shell expands $SSH_CONNECTION before sudo drops it.
	out, err := c.Run(ctx, comm.Sudo(c, loginArgsShell), strings.NewReader(script.String()))
	if err != nil {
		return nil, fmt.Errorf("gather facts: %w", err)
	}
	return ParseFacts(out)
}

// ParseFacts reads the output of the facts script.
func ParseFacts(out []byte) (*Facts, error) {
	f := &Facts{
		Files:     map[string]string{},
		Packages:  map[string]string{},
		Units:     map[string]string{},
		UnitFiles: map[string]string{},
		Commands:  map[string]string{},
	}
	osr := map[string]string{}
	ended := false
	// section is the command output being read ("" outside one).
	section := ""
	var units []string // the units section's names, in systemctl's block order
	unit := map[string]string{}
	var pemLines []string
	endUnit := func() {
		if len(unit) == 0 {
			return
		}
		// Blocks come in the order asked; an alias's block carries the
		// unit's own Id, so the position names it. Should systemctl skip
		// a name, the Id realigns the rest.
		if id := unit["Id"]; id != "" && len(units) > 0 && id != units[0] {
			if i := slices.Index(units, id); i > 0 {
				units = units[i:]
			}
		}
		if len(units) > 0 {
			name := units[0]
			units = units[1:]
			f.Units[name] = unit["ActiveState"]
			f.UnitFiles[name] = unit["UnitFileState"]
		}
		unit = map[string]string{}
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch section {
		case "files":
			if line == "files-end" {
				section = ""
			} else if sum, path, ok := strings.Cut(line, "  "); ok && len(sum) == 64 {
				f.Files[path] = sum
			}
			continue
		case "modes":
			if line == "modes-end" {
				section = ""
			} else if mode, path, ok := strings.Cut(line, " "); ok {
				if m, err := strconv.ParseUint(mode, 8, 32); err == nil {
					if f.Modes == nil {
						f.Modes = map[string]fs.FileMode{}
					}
					f.Modes[path] = fs.FileMode(m)
				}
			}
			continue
		case "units":
			switch {
			case line == "units-end":
				endUnit()
				section = ""
			case line == "":
				endUnit()
			default:
				if k, v, ok := strings.Cut(line, "="); ok {
					unit[k] = v
				}
			}
			continue
		case "swarmpem":
			if line == "swarmpem-end" {
				f.Swarm = parseSwarmPEM([]byte(strings.Join(pemLines, "\n") + "\n"))
				section = ""
			} else {
				pemLines = append(pemLines, line)
			}
			continue
		}
		kind, rest, _ := strings.Cut(line, "\t")
		fields := strings.Split(rest, "\t")
		switch kind {
		case "files", "modes", "swarmpem":
			section = kind
		case "units":
			section, units = kind, strings.Fields(rest)
		case "ssh_client":
			f.SSHClient = strings.TrimSpace(rest)
		case "os":
			k, v, ok := strings.Cut(rest, "=")
			if ok && !strings.HasPrefix(strings.TrimSpace(k), "#") {
				osr[strings.TrimSpace(k)] = unquoteOS(v)
			}
		case "arch":
			f.Arch = strings.TrimSpace(rest)
		case "hostname":
			f.Hostname = strings.TrimSpace(rest)
		case "addrs":
			f.Addrs = strings.Fields(rest)
		case "cmd":
			if len(fields) == 2 {
				f.Commands[fields[0]] = fields[1]
			}
		case "file":
			if len(fields) >= 2 && len(fields[1]) == 64 {
				f.Files[fields[0]] = fields[1]
			}
			if len(fields) == 3 {
				if m, err := strconv.ParseUint(fields[2], 8, 32); err == nil {
					if f.Modes == nil {
						f.Modes = map[string]fs.FileMode{}
					}
					f.Modes[fields[0]] = fs.FileMode(m)
				}
			}
		case "esp":
			f.ESP = strings.TrimSpace(rest)
		case "pkg":
			// status abbreviation: want, status, error ("ii "); installed when status is 'i'.
			if len(fields) == 3 && len(fields[0]) >= 2 && fields[0][1] == 'i' {
				f.Packages[fields[1]] = fields[2]
			}
		case "unit":
			if len(fields) == 3 {
				f.Units[fields[0]] = fields[1]
				f.UnitFiles[fields[0]] = fields[2]
			}
		case "engine":
			f.Engine = engineVersion(rest)
		case "virt":
			f.Virt = strings.TrimSpace(rest)
		case "cloudinit":
			f.CloudInit = strings.TrimSpace(rest)
			if f.CloudInit == "" {
				f.CloudInit = "unknown"
			}
		case "swarmcert":
			f.Swarm = parseSwarmCert(strings.TrimSpace(rest))
		case "fwdrop":
			if v := strings.TrimSpace(rest); v != "" {
				f.InputDrop = append(f.InputDrop, v)
			}
		case "sshport":
			if n, err := strconv.Atoi(strings.TrimSpace(rest)); err == nil && n > 0 && n < 65536 && !slices.Contains(f.SSHPorts, n) {
				f.SSHPorts = append(f.SSHPorts, n)
			}
		case "sshd":
			if k, v, ok := strings.Cut(strings.TrimSpace(rest), "\t"); ok {
				if f.SSHD == nil {
					f.SSHD = map[string]string{}
				}
				f.SSHD[k] = strings.TrimSpace(v)
			}
		case "busy":
			if s := strings.TrimSpace(rest); s != "" {
				f.Busy = append(f.Busy, s)
			}
		case "end":
			ended = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse facts: %w", err)
	}
	if !ended {
		return nil, fmt.Errorf("parse facts: output ends early (%d bytes)", len(out))
	}
	f.OS = OSRelease{
		ID:        osr["ID"],
		VersionID: osr["VERSION_ID"],
		Codename:  osr["VERSION_CODENAME"],
		Pretty:    osr["PRETTY_NAME"],
	}
	if like := osr["ID_LIKE"]; like != "" {
		f.OS.IDLike = strings.Fields(like)
	}
	return f, nil
}

// unquoteOS undoes os-release quoting: "x", 'x' or bare.
func unquoteOS(v string) string {
	v = strings.TrimSpace(v)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		if s, err := strconv.Unquote(v); err == nil {
			return s
		}
		return v[1 : len(v)-1]
	}
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		return v[1 : len(v)-1]
	}
	return v
}

// engineVersion takes "Docker version 20.10.24+dfsg1, build 297e128" to
// "20.10.24+dfsg1".
func engineVersion(s string) string {
	s = strings.TrimSpace(s)
	i := strings.Index(s, "version ")
	if i < 0 {
		return ""
	}
	v := s[i+len("version "):]
	if j := strings.IndexAny(v, ", "); j >= 0 {
		v = v[:j]
	}
	return v
}

// parseSwarmCert reads an engine's swarm node certificate (base64 of its
// PEM): the swarm's node certificates name the node (CN), its role (OU)
// and the swarm's cluster ID (O). nil when it cannot be read.
func parseSwarmCert(b64 string) *SwarmMember {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil
	}
	return parseSwarmPEM(raw)
}

// parseSwarmPEM reads a swarm node certificate in PEM; nil when it cannot be read.
func parseSwarmPEM(raw []byte) *SwarmMember {
	blk, _ := pem.Decode(raw)
	if blk == nil {
		return nil
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || len(cert.Subject.Organization) == 0 {
		return nil
	}
	m := &SwarmMember{NodeID: cert.Subject.CommonName, ClusterID: cert.Subject.Organization[0]}
	if len(cert.Subject.OrganizationalUnit) > 0 {
		m.Role = strings.TrimPrefix(cert.Subject.OrganizationalUnit[0], "swarm-")
	}
	return m
}
