package spec

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/provision/provision/drivers"
)

// Defaults.
const (
	// MaxDefaultParallelism bounds the default parallelism, which is every
	// host of the cluster at once (hosts mostly wait: boots, installs,
	// round trips); apply lowers it further to fit the file-descriptor limit.
	MaxDefaultParallelism = 256
	DefaultUser           = "provision"
	DefaultPackage        = "docker.io"
	DefaultValidityHours  = 8760
	// DefaultNodeCertExpiry is the swarm's node certificate lifetime
	// (Docker's own default).
	DefaultNodeCertExpiry = 2160 * time.Hour
	// DefaultLogDriver and DefaultJournaldMaxUse are the logging block's.
	DefaultLogDriver      = "json-file"
	DefaultJournaldMaxUse = "500M"
	// DefaultLogRetentionDays is how long a cloud log group keeps events.
	DefaultLogRetentionDays = 30
	maxMachines             = 10000
)

// DefaultEngine is the engine block's settings when the spec says nothing:
// the distro's docker.io package from the host's sources, any version,
// with the metrics endpoint on the host's private address.
func DefaultEngine() Engine {
	return Engine{Method: "package", Package: DefaultPackage, MetricsAddr: DefaultMetricsAddr}
}

// DefaultPrune is the prune block's settings when the spec says nothing:
// daily, what is unused for a day, spread over an hour.
func DefaultPrune() Prune {
	return Prune{Enabled: true, Schedule: "daily", Until: "24h", RandomizedDelay: "1h"}
}

// DefaultLogging is the logging block's settings when the spec says nothing.
func DefaultLogging() Logging {
	return Logging{Driver: DefaultLogDriver, Options: defaultLogOptions(DefaultLogDriver), JournaldMaxUse: DefaultJournaldMaxUse, RetentionDays: DefaultLogRetentionDays}
}

var rootSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "name", Required: true},
		{Name: "parallelism"},
		{Name: "images"},
	},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "variable", LabelNames: []string{"name"}},
		{Type: "driver", LabelNames: []string{"type"}},
		{Type: "managers"},
		{Type: "workers"},
		{Type: "engine"},
		{Type: "prune"},
		{Type: "logging"},
		{Type: "tls"},
		{Type: "hardening"},
		{Type: "swarm"},
		{Type: "ssh"},
		{Type: "load_balancer"},
	},
}

var poolSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "pool"}, {Name: "driver"}, {Name: "count"}, {Name: "disk"}, {Name: "docker_disk"}, {Name: "size"}, {Name: "labels"}, {Name: "hosts"},
}}

var driverCoreSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "alias"}}}

func attrSchema(names ...string) *hcl.BodySchema {
	s := &hcl.BodySchema{}
	for _, n := range names {
		s.Attributes = append(s.Attributes, hcl.AttributeSchema{Name: n})
	}
	return s
}

var (
	engineSchema = &hcl.BodySchema{
		Attributes: attrSchema("version", "method", "package", "bundle_dir", "metrics_addr", "metrics_cidrs", "registry_mirrors").Attributes,
		Blocks:     []hcl.BlockHeaderSchema{{Type: "registry", LabelNames: []string{"host"}}},
	}
	pruneSchema     = attrSchema("enabled", "schedule", "until", "volumes", "randomized_delay")
	loggingSchema   = attrSchema("driver", "options", "journald_max_use", "retention_days")
	tlsSchema       = attrSchema("validity", "extra_names", "allowed_cidrs", "renew_before")
	swarmSchema     = attrSchema("autolock", "node_cert_expiry")
	hardeningSchema = &hcl.BodySchema{
		Attributes: attrSchema("profile", "ssh", "kernel", "firewall", "daemon", "audit", "updates", "auto_reboot", "user_namespaces", "overlay_encryption",
			"ssh_users", "ssh_groups").Attributes,
		Blocks: []hcl.BlockHeaderSchema{{Type: "firewall_allow"}},
	}
	firewallRuleSchema = attrSchema("protocol", "ports", "from")
	sshSchema          = attrSchema("user", "connect_timeout")
)

// Load reads the cluster files (usually one), applies the variables and
// returns the checked cluster. Diagnostics may hold warnings even when the
// cluster is returned; on any error the cluster is nil.
func Load(files []string, vars Vars) (*Cluster, hcl.Diagnostics) {
	srcs := make([]source, 0, len(files))
	var diags hcl.Diagnostics
	for _, f := range files {
		b, d := readInput(f, "cluster file")
		if d != nil {
			diags = append(diags, d)
			continue
		}
		srcs = append(srcs, source{Name: f, Src: b})
	}
	if diags.HasErrors() {
		return nil, diags
	}
	return LoadSources(srcs, vars)
}

// source is one file's name and bytes.
type source struct {
	Name string
	Src  []byte
}

// LoadBytes is Load for a file held in memory (tests, fuzzing).
func LoadBytes(name string, src []byte, vars Vars) (*Cluster, hcl.Diagnostics) {
	return LoadSources([]source{{Name: name, Src: src}}, vars)
}

// LoadSources loads several in-memory files as one cluster.
func LoadSources(srcs []source, vars Vars) (c *Cluster, diags hcl.Diagnostics) {
	if len(srcs) == 0 {
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "No cluster file", Detail: "Give the path of a cluster file."}}
	}
	// Values of variables declared sensitive never appear in what Load
	// returns: not in diagnostics, and (through Cluster.Secrets) not in
	// anything the caller prints.
	var secrets []string
	var sensitive sensitiveUse
	defer func() { redactDiags(diags, secrets, sensitive) }()
	p := hclparse.NewParser()
	var hfiles []*hcl.File
	var names []string
	var templates []struct {
		name string
		t    templateAt
	}
	for _, s := range srcs {
		var f *hcl.File
		var d hcl.Diagnostics
		if len(s.Src) > MaxFileBytes {
			diags = append(diags, fileDiag(s.Name, "File too large", fmt.Sprintf("This cluster file is larger than %s, the limit for cluster files.", byteSize(MaxFileBytes))))
			continue
		}
		if strings.HasSuffix(s.Name, ".json") {
			var ts []templateAt
			if d, ts = checkJSONSource(s.Src, s.Name); !d.HasErrors() {
				f, d = p.ParseJSON(s.Src, s.Name)
				for _, t := range ts {
					templates = append(templates, struct {
						name string
						t    templateAt
					}{s.Name, t})
				}
			}
		} else if d = checkHCLSource(s.Src, s.Name, false); !d.HasErrors() {
			f, d = p.ParseHCL(s.Src, s.Name)
		}
		diags = append(diags, d...)
		if f != nil && !d.HasErrors() {
			hfiles = append(hfiles, f)
		}
		names = append(names, s.Name)
	}
	if diags.HasErrors() {
		return nil, diags
	}
	body := hcl.MergeFiles(hfiles)

	// Pass 1: variables, so every other expression can use var.NAME.
	vcontent, _, d := body.PartialContent(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: "variable", LabelNames: []string{"name"}}}})
	diags = append(diags, d...)
	budget := &evalBudget{}
	decl, d := decodeVariables(vcontent.Blocks, budget)
	diags = append(diags, d...)
	varObj, secrets, d := resolveVariables(decl, vars, readFile, budget)
	diags = append(diags, d...)
	sensitive = findSensitiveUse(hfiles, decl)
	if diags.HasErrors() {
		return nil, diags
	}
	ctx := &hcl.EvalContext{Variables: map[string]cty.Value{"var": varObj}, Functions: functions(budget)}

	// Every expression's cost is bounded before anything evaluates it
	// (drivers decode their own blocks, so this walks the whole files).
	for _, f := range hfiles {
		diags = append(diags, checkBodyCost(f.Body, ctx, "variable")...)
	}
	for _, t := range templates {
		if expr, d := hclsyntax.ParseTemplate([]byte(t.t.src), t.name, t.t.pos); !d.HasErrors() {
			diags = append(diags, checkCost(expr, ctx)...)
		}
	}
	if diags.HasErrors() {
		return nil, diags
	}

	// Pass 2: everything.
	content, d := body.Content(rootSchema)
	atFile(d, names[0])
	diags = append(diags, d...)
	dc := &dec{ctx: ctx, ranges: map[string]hcl.Range{}, sensitive: sensitive, sensitivePaths: map[string]bool{}}
	c = &Cluster{Files: names, Ranges: dc.ranges, Secrets: secrets, SensitivePaths: dc.sensitivePaths}
	c.Engine = DefaultEngine()
	c.Prune = DefaultPrune()
	c.Logging = Logging{Driver: DefaultLogDriver, JournaldMaxUse: DefaultJournaldMaxUse, RetentionDays: DefaultLogRetentionDays}
	c.TLS = TLS{ValidityHours: DefaultValidityHours}
	c.SSH = SSH{User: DefaultUser}
	c.Swarm = Swarm{Autolock: true, NodeCertExpiry: DefaultNodeCertExpiry}
	c.LoadBalancer = defaultLoadBalancer()

	if r, ok := dc.requiredStr(content.Attributes, "name", "name", &c.Name); ok {
		checkName(dc, r, c.Name)
	}
	if r, ok := dc.integer(content.Attributes, "parallelism", "parallelism", &c.Parallelism); ok && (c.Parallelism < 1 || c.Parallelism > 256) {
		dc.errf(r, "Invalid parallelism", "parallelism must be between 1 and 256, not %d.", c.Parallelism)
	}

	singles := map[string]*hcl.Block{}
	var managerBlocks, workerBlocks []*hcl.Block
	for _, b := range content.Blocks {
		switch b.Type {
		case "variable":
		case "driver":
			decodeDriver(dc, c, b)
		case "managers":
			managerBlocks = append(managerBlocks, b)
		case "workers":
			workerBlocks = append(workerBlocks, b)
		default:
			if prev, ok := singles[b.Type]; ok {
				dc.errf(b.DefRange, "Duplicate "+b.Type+" block", "Only one %s block is allowed; the first is at %s.", b.Type, prev.DefRange)
				continue
			}
			singles[b.Type] = b
		}
	}
	if len(c.Drivers) == 0 {
		// The embedded default: local system containers.
		c.Drivers = append(c.Drivers, DriverBlock{Type: "local", Name: "local", Body: hcl.EmptyBody(), Range: content.MissingItemRange, Eval: ctx})
	}
	if b := singles["engine"]; b != nil {
		decodeEngine(dc, c, b)
	}
	decodeImages(dc, c, content.Attributes, names[0]) // images.go
	if b := singles["prune"]; b != nil {
		decodePrune(dc, c, b)
	}
	if b := singles["logging"]; b != nil {
		decodeLogging(dc, c, b)
	} else {
		c.Logging.Options = defaultLogOptions(c.Logging.Driver)
	}
	if b := singles["tls"]; b != nil {
		decodeTLS(dc, c, b)
	}
	if c.TLS.RenewBeforeHours == 0 {
		c.TLS.RenewBeforeHours = max(1, c.TLS.ValidityHours/3)
	}
	decodeHardening(dc, c, singles["hardening"])
	if b := singles["swarm"]; b != nil {
		decodeSwarm(dc, c, b)
	}
	if b := singles["ssh"]; b != nil {
		decodeSSH(dc, c, b)
	}
	if b := singles["load_balancer"]; b != nil {
		decodeLoadBalancer(dc, c, b)
	}

	switch {
	case len(managerBlocks) == 0:
		r := fileStart(content.MissingItemRange, names[0])
		dc.errf(r, "Missing managers block", "The cluster file has no managers block: a cluster needs one with at least one manager, e.g. `managers { count = 1 }`.")
	case len(managerBlocks) > 1:
		dc.errf(managerBlocks[1].DefRange, "Duplicate managers block", "Only one managers block is allowed; the first is at %s. Use workers blocks with `pool = \"...\"` for several groups.", managerBlocks[0].DefRange)
		fallthrough
	default:
		c.Managers = decodePool(dc, c, managerBlocks[0], RoleManager)
	}
	seen := map[string]hcl.Range{RoleManager: {}}
	for _, b := range workerBlocks {
		p := decodePool(dc, c, b, RoleWorker)
		if prev, ok := seen[p.Name]; ok {
			if p.Name == RoleManager {
				dc.errf(p.Range, "Invalid pool name", "A workers pool cannot be called %q.", p.Name)
			} else {
				dc.errf(p.Range, "Duplicate worker pool", "Pool %q is already defined at %s: give each workers block its own `pool` name.", p.Name, prev)
			}
			continue
		}
		seen[p.Name] = p.Range
		c.Workers = append(c.Workers, p)
	}
	if len(managerBlocks) > 0 {
		checkCluster(dc, c)
		checkLogPlatform(dc, c) // logging.go
	}
	if c.Parallelism == 0 {
		n := 0
		for _, p := range c.Pools() {
			n += p.Count
		}
		c.Parallelism = min(max(n, 1), MaxDefaultParallelism)
	}
	diags = append(diags, dc.diags...)
	sortDiags(diags)
	if diags.HasErrors() {
		return nil, diags
	}
	return c, diags
}

// fileStart is r, or line 1 of file when r points nowhere (an empty file, or
// the merged body of several files, has no range of its own).
func fileStart(r hcl.Range, file string) hcl.Range {
	if r.Filename == "" || r.Start.Line < 1 {
		return hcl.Range{Filename: file, Start: hcl.InitialPos, End: hcl.InitialPos}
	}
	return r
}

// atFile points diagnostics that have no place of their own (a missing
// required attribute in an empty file) at line 1 of the file.
func atFile(diags hcl.Diagnostics, file string) {
	for _, d := range diags {
		r := fileStart(hcl.Range{}, file)
		if d.Subject != nil {
			r = fileStart(*d.Subject, file)
		}
		d.Subject = &r
	}
}

// sortDiags orders diagnostics by position so they read top to bottom.
func sortDiags(diags hcl.Diagnostics) {
	sort.SliceStable(diags, func(i, j int) bool {
		a, b := diags[i].Subject, diags[j].Subject
		if a == nil || b == nil {
			return a != nil && b == nil
		}
		if a.Filename != b.Filename {
			return a.Filename < b.Filename
		}
		return a.Start.Byte < b.Start.Byte
	})
}

var (
	nameRe   = regexp.MustCompile(`^[a-z]([a-z0-9-]*[a-z0-9])?$`)
	userRe   = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}$`)
	labelKey = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$`)
)

func checkName(dc *dec, r hcl.Range, name string) {
	if len(name) > 30 || !nameRe.MatchString(name) {
		dc.errf(r, "Invalid cluster name", "%q is not a valid cluster name: use 1-30 lowercase letters, digits and '-', starting with a letter and not ending with '-'. It becomes part of every host name.", name)
	}
}

func decodeDriver(dc *dec, c *Cluster, b *hcl.Block) {
	typ := b.Labels[0]
	lr := b.LabelRanges[0]
	if _, ok := drivers.Lookup(typ); !ok {
		dc.errf(lr, "Unknown driver type", "%q is not a driver type. Known types: %s.", typ, strings.Join(drivers.Types(), ", "))
		return
	}
	content, rest, d := b.Body.PartialContent(driverCoreSchema)
	dc.diags = append(dc.diags, d...)
	name := typ
	if r, ok := dc.str(content.Attributes, "alias", "driver."+typ+".alias", &name); ok && (!nameRe.MatchString(name) || len(name) > 30) {
		dc.errf(r, "Invalid driver alias", "%q is not a valid alias: use lowercase letters, digits and '-'.", name)
	}
	for _, prev := range c.Drivers {
		if prev.Name == name {
			dc.errf(b.DefRange, "Duplicate driver", "A driver named %q is already declared at %s. Give each driver block of the same type its own `alias`.", name, prev.Range)
			return
		}
	}
	db := DriverBlock{Type: typ, Name: name, Body: rest, Range: b.DefRange, Eval: dc.ctx}
	c.Drivers = append(c.Drivers, db)
	// The driver's own settings are checked by its factory, which does no
	// network I/O, so validate catches them too.
	if info, _ := drivers.Lookup(typ); info.New != nil {
		drv, d := info.New(rest, drivers.Options{Name: name, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Eval: dc.ctx})
		dc.diags = append(dc.diags, d...)
		if hc, ok := drv.(drivers.HostsChecker); ok && !d.HasErrors() {
			dc.hostsCheckers = append(dc.hostsCheckers, namedHostsChecker{name, hc})
		}
	}
}

func decodePool(dc *dec, c *Cluster, b *hcl.Block, role string) Pool {
	content, d := b.Body.Content(poolSchema)
	dc.diags = append(dc.diags, d...)
	p := Pool{Role: role, Name: RoleManager, Range: b.DefRange}
	path := poolPath(p)
	if role == RoleWorker {
		p.Name = RoleWorker
		if r, ok := dc.str(content.Attributes, "pool", "workers.pool", &p.Name); ok {
			if !nameRe.MatchString(p.Name) || len(p.Name) > 20 {
				dc.errf(r, "Invalid pool name", "%q is not a valid pool name: use up to 20 lowercase letters, digits and '-'.", p.Name)
			}
		}
		path = poolPath(p)
	} else if a, ok := content.Attributes["pool"]; ok {
		dc.errf(a.NameRange, "Unsupported argument", "The managers block has no pool attribute: there is one manager pool.")
	}
	countRange, hasCount := dc.integer(content.Attributes, "count", path+".count", &p.Count)
	hostsRange, hasHosts := dc.strList(content.Attributes, "hosts", path+".hosts", &p.Hosts)

	// Driver.
	if r, ok := dc.str(content.Attributes, "driver", path+".driver", &p.Driver); ok {
		if _, ok := c.Driver(p.Driver); !ok {
			var known []string
			for _, d := range c.Drivers {
				known = append(known, d.Name)
			}
			dc.errf(r, "Undeclared driver", "%s uses driver %q, but no driver block declares it. Declared: %s.", path, p.Driver, strings.Join(known, ", "))
			p.Driver = ""
		}
	} else if len(c.Drivers) == 1 {
		p.Driver = c.Drivers[0].Name
	} else if len(c.Drivers) > 1 {
		dc.errf(b.DefRange, "Missing driver", "The file declares several drivers, so %s must say which one it uses: `driver = \"...\"`.", path)
	}
	var info drivers.Info
	if db, ok := c.Driver(p.Driver); ok {
		info, _ = drivers.Lookup(db.Type)
	}

	// Count and hosts.
	if hasCount && p.Count < 0 {
		dc.errf(countRange, "Negative count", "%s.count is %d: a count cannot be negative.", path, p.Count)
	} else if hasCount && p.Count > maxMachines {
		dc.errf(countRange, "Count too large", "%s.count is %d: at most %d machines per pool.", path, p.Count, maxMachines)
	}
	if info.NeedsHosts {
		if !hasHosts || len(p.Hosts) == 0 {
			dc.errf(b.DefRange, "Missing hosts", "%s uses the %s driver, which works on existing machines: list their addresses in `hosts = [\"10.0.0.5\", ...]`.", path, info.Type)
		} else {
			if !hasCount {
				p.Count = len(p.Hosts)
			} else if p.Count > len(p.Hosts) {
				dc.errf(hostsRange, "Not enough hosts", "%s.count is %d but hosts lists only %d addresses: a bare-metal pool needs one existing host per machine.", path, p.Count, len(p.Hosts))
			} else if p.Count < len(p.Hosts) {
				dc.warnf(hostsRange, "Unused hosts", "%s.count is %d, so only the first %d of the %d hosts are used.", path, p.Count, p.Count, len(p.Hosts))
			}
			for _, h := range p.Hosts {
				if !validHostPort(h) {
					dc.errf(hostsRange, "Invalid host address", "%q is not a host address: write \"10.0.0.5\", \"host.example\" or \"host:2222\".", h)
				}
			}
		}
	} else if hasHosts && p.Driver != "" {
		dc.errf(hostsRange, "Unsupported argument", "hosts lists existing machines, which only the generic driver uses; the %s driver creates its machines: use count.", info.Type)
	}
	if !hasCount && !info.NeedsHosts {
		p.Count = 1
	}
	if role == RoleManager && hasCount && p.Count == 0 {
		dc.errf(countRange, "No managers", "A swarm needs at least one manager: set managers.count to 1, 3 or 5.")
	}

	// Disk and size: a setting the driver does not use is accepted with a
	// warning (it never rebuilds a machine).
	if r, ok := dc.size(content.Attributes, "disk", path+".disk", &p.DiskGiB); ok {
		switch {
		case p.DiskGiB <= 0:
			dc.errf(r, "Invalid disk size", "%s.disk must be positive.", path)
		case info.Type != "" && !info.Uses("disk"):
			dc.warnf(r, "Setting ignored by the driver", "The %s driver does not use disk (%s): %s.disk is ignored, and changing it never rebuilds a machine.", info.Type, ignoredWhy(info.Type, "disk"), path)
		case p.DiskGiB < info.MinDiskGiB:
			dc.errf(r, "Disk too small", "%s.disk is under %d GiB, the least the %s driver takes.", path, info.MinDiskGiB, info.Type)
		}
	} else {
		p.DiskGiB = info.DefaultGiB
	}
	// docker_disk: a second disk for /var/lib/docker (CIS Docker Benchmark
	// 1.1.1), from drivers that can attach one; 0 is none.
	if r, ok := dc.size(content.Attributes, "docker_disk", path+".docker_disk", &p.DockerDiskGiB); ok {
		switch {
		case p.DockerDiskGiB < 0:
			dc.errf(r, "Invalid disk size", "%s.docker_disk cannot be negative (0 is no separate disk).", path)
		case p.DockerDiskGiB == 0:
		case info.Type != "" && !info.Uses("docker_disk"):
			dc.warnf(r, "Setting ignored by the driver", "The %s driver does not use docker_disk (%s): %s.docker_disk is ignored, and changing it never rebuilds a machine.", info.Type, ignoredWhy(info.Type, "docker_disk"), path)
		case p.DockerDiskGiB < MinDockerDiskGiB:
			dc.errf(r, "Disk too small", "%s.docker_disk is under %d GiB, the least the engine's data disk may have (images, containers and volumes live there).", path, MinDockerDiskGiB)
		}
	}
	if r, ok := dc.str(content.Attributes, "size", path+".size", &p.Size); ok && info.Type != "" {
		switch {
		case !info.Uses("size"):
			dc.warnf(r, "Setting ignored by the driver", "The %s driver does not use size (%s): %s.size is ignored, and changing it never rebuilds a machine.", info.Type, ignoredWhy(info.Type, "size"), path)
		case info.CheckSize != nil && p.Size != "":
			if err := info.CheckSize(p.Size); err != nil {
				dc.errf(r, "Invalid size", "%s.size for the %s driver: %v.", path, info.Type, err)
			}
		}
	}
	if r, ok := dc.strMap(content.Attributes, "labels", path+".labels", &p.Labels); ok {
		for _, k := range sortedKeys(p.Labels) {
			if !labelKey.MatchString(k) || strings.HasPrefix(k, "provision.") || len(k) > 128 {
				dc.errf(r, "Invalid label", "Label key %q is not allowed: use letters, digits, '.', '_', '/' and '-'; the provision. prefix is reserved.", k)
			}
		}
	}
	return p
}

// ignoredWhy says why a driver type has no use for a pool setting.
func ignoredWhy(typ, setting string) string {
	switch {
	case typ == "local" && setting == "disk":
		return "containers share the engine's disk"
	case typ == "local" && setting == "docker_disk":
		return "each container keeps /var/lib/docker on a volume of its own already"
	case typ == "generic":
		return "it uses existing machines as they are"
	}
	return "not a setting of this platform"
}

func validHostPort(h string) bool {
	host := h
	if hh, port, err := net.SplitHostPort(h); err == nil {
		host = hh
		if n, err := parsePort(port); err != nil || n == 0 {
			return false
		}
	}
	if net.ParseIP(host) != nil {
		return true
	}
	if strings.Trim(host, "0123456789.") == "" {
		return false // "999.1.1.1", "010.0.0.5": not an address, and resolvers differ on what they mean
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if len(label) == 0 || len(label) > 63 {
			return false
		}
	}
	return len(host) > 0 && len(host) <= 253 && hostRe.MatchString(host)
}

// validDNSName accepts a DNS name: labels of 1-63 letters, digits and
// '-', not all digits ("999.1.1.1" is a bad address, not a name).
func validDNSName(n string) bool {
	if !hostRe.MatchString(n) || strings.Trim(n, "0123456789.") == "" {
		return false
	}
	for _, l := range strings.Split(n, ".") {
		if len(l) == 0 || len(l) > 63 || strings.HasPrefix(l, "-") || strings.HasSuffix(l, "-") {
			return false
		}
	}
	return true
}

// hostKey is what makes two entries of hosts the same machine: the
// address in canonical form (IPv6 compressed and lower-case, IPv4-mapped
// unmapped) or the name in lower case without a trailing dot, and the port,
// 22 when none is written.
func hostKey(h string) string {
	host, port := h, "22"
	if hh, pp, err := net.SplitHostPort(h); err == nil {
		host, port = hh, pp
	}
	if a, err := netip.ParseAddr(host); err == nil {
		host = a.Unmap().String()
	} else {
		host = strings.TrimSuffix(strings.ToLower(host), ".")
	}
	return net.JoinHostPort(host, port)
}

var hostRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

func parsePort(s string) (int, error) {
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n < 0 || n > 65535 || fmt.Sprint(n) != s {
		return 0, fmt.Errorf("bad port")
	}
	return n, nil
}

// poolPath is the pool's settings path in Cluster.Ranges ("managers",
// "workers.gpu").
func poolPath(p Pool) string {
	if p.Role == RoleManager {
		return "managers"
	}
	return "workers." + p.Name
}

// checkCluster runs the checks that need the whole cluster.
func checkCluster(dc *dec, c *Cluster) {
	m := c.Managers
	if m.Count > 0 && m.Count%2 == 0 {
		r := m.Range
		if cr, ok := c.Ranges["managers.count"]; ok {
			r = cr
		}
		dc.warnf(r, "Even number of managers", "%d managers survive the loss of %d, as %d would: Raft needs a majority (%d of %d) to keep the swarm running. Use an odd count (1, 3, 5 or 7).", m.Count, (m.Count-1)/2, m.Count-1, m.Count/2+1, m.Count)
	}
	if m.Count > 7 {
		dc.warnf(m.Range, "Many managers", "%d managers slow down Raft; Docker recommends at most 7.", m.Count)
	}
	checkNetworks(dc, c)
	total := 0
	type hostUse struct{ pool, as string }
	hosts := map[string]hostUse{}
	for _, p := range c.Pools() {
		total += p.Count
		for i, h := range p.Hosts {
			if i >= p.Count {
				break
			}
			here := p.Role + "s/" + p.Name
			rng := p.Range
			if r, ok := c.Ranges[poolPath(p)+".hosts"]; ok {
				rng = r
			}
			key := hostKey(h)
			if prev, ok := hosts[key]; ok {
				if prev.pool == here {
					dc.errf(rng, "Host used twice", "%s lists one machine twice: %q and %q (a missing port is 22; names are not case-sensitive).", here, prev.as, h)
				} else {
					dc.errf(rng, "Host used twice", "Host %q is listed in both %s (as %q) and %s: one machine cannot be two nodes.", h, prev.pool, prev.as, here)
				}
				continue
			}
			hosts[key] = hostUse{pool: here, as: h}
		}
		if n := MachineName(c.Name, p.Name, p.Count); len(n) > 63 {
			dc.errf(p.Range, "Machine names too long", "Machine names like %q exceed 63 characters: shorten the cluster or pool name.", n)
		}
	}
	if r, ok := c.Ranges["ssh.user"]; ok {
		created := false
		for _, p := range c.Pools() {
			d, _ := c.Driver(p.Driver)
			info, _ := drivers.Lookup(d.Type)
			created = created || !info.NeedsHosts
		}
		if !created {
			dc.warnf(r, "Setting ignored", "ssh.user is the admin user provision makes on the machines a driver creates; every pool here lists existing hosts, which are reached as the generic driver's user.")
		}
	}
	for _, hc := range dc.hostsCheckers {
		var listed []string
		for _, p := range c.Pools() {
			if p.Driver == hc.name {
				listed = append(listed, p.Hosts[:min(p.Count, len(p.Hosts))]...)
			}
		}
		dc.diags = append(dc.diags, hc.CheckHosts(listed)...)
	}
	if total > maxMachines {
		dc.errf(m.Range, "Too many machines", "The cluster has %d machines; at most %d are supported.", total, maxMachines)
	}
}

func decodeEngine(dc *dec, c *Cluster, b *hcl.Block) {
	content, d := b.Body.Content(engineSchema)
	dc.diags = append(dc.diags, d...)
	if r, ok := dc.str(content.Attributes, "version", "engine.version", &c.Engine.Version); ok {
		switch v := c.Engine.Version; {
		case v == "":
			// The distro's candidate, as when version is not written.
		case !versionRe.MatchString(v):
			dc.errf(r, "Invalid engine version", "%q is not a package version: write it as apt shows it (\"20.10.24+dfsg1-1+deb12u1\") or a prefix ending in '*' (\"20.10.*\").", v)
		case !strings.HasSuffix(v, "*") && !strings.Contains(v, "-"):
			// Exact pins: "20.10.2" no longer matches 20.10.24.
			dc.warnf(r, "Engine version is exact", "engine.version %q matches only that exact package version, and Debian versions of the engine carry a revision (\"20.10.24+dfsg1-1+deb12u1\"). Write %q to take the newest %s release.", v, v+"*", v)
		}
	}
	if r, ok := dc.str(content.Attributes, "method", "engine.method", &c.Engine.Method); ok && c.Engine.Method != "package" && c.Engine.Method != "bundle" {
		dc.errf(r, "Invalid install method", "engine.method is %q; use \"package\" (from the host's package mirror) or \"bundle\" (an offline bundle uploaded from this machine).", c.Engine.Method)
	}
	if r, ok := dc.str(content.Attributes, "package", "engine.package", &c.Engine.Package); ok && !pkgRe.MatchString(c.Engine.Package) {
		dc.errf(r, "Invalid package name", "%q is not a Debian package name.", c.Engine.Package)
	}
	if r, ok := dc.str(content.Attributes, "bundle_dir", "engine.bundle_dir", &c.Engine.BundleDir); ok && c.Engine.Method != "bundle" {
		dc.warnf(r, "Setting ignored", "engine.bundle_dir is where method = \"bundle\" keeps its packages; with method %q nothing reads it.", c.Engine.Method)
	}
	decodeMetrics(dc, c, content.Attributes)
	decodeRegistries(dc, c, content) // images.go
}

var (
	versionRe = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~:-]*\*?$`)
	pkgRe     = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
)

func decodePrune(dc *dec, c *Cluster, b *hcl.Block) {
	content, d := b.Body.Content(pruneSchema)
	dc.diags = append(dc.diags, d...)
	dc.boolean(content.Attributes, "enabled", "prune.enabled", &c.Prune.Enabled)
	dc.boolean(content.Attributes, "volumes", "prune.volumes", &c.Prune.Volumes)
	if r, ok := dc.str(content.Attributes, "schedule", "prune.schedule", &c.Prune.Schedule); ok {
		if err := CheckCalendar(c.Prune.Schedule); err != nil {
			dc.errf(r, "Invalid schedule", "prune.schedule %q is not a systemd calendar expression: %s. Examples: \"daily\", \"Sun *-*-* 03:00\", \"*-*-* 02,14:30\".", c.Prune.Schedule, err)
		}
	}
	if r, ok := dc.str(content.Attributes, "until", "prune.until", &c.Prune.Until); ok {
		if dd, err := time.ParseDuration(c.Prune.Until); err != nil || dd < 0 || strings.HasPrefix(c.Prune.Until, "-") {
			dc.errf(r, "Invalid age filter", "prune.until %q is not a duration like \"24h\" or \"168h\".", c.Prune.Until)
		}
	}
	if r, ok := dc.str(content.Attributes, "randomized_delay", "prune.randomized_delay", &c.Prune.RandomizedDelay); ok {
		// systemd refuses any sign, "-0s" included, and then drops the setting.
		if dd, err := time.ParseDuration(c.Prune.RandomizedDelay); err != nil || dd < 0 || strings.HasPrefix(c.Prune.RandomizedDelay, "-") {
			dc.errf(r, "Invalid delay", "prune.randomized_delay %q is not a duration like \"1h\" or \"30m\".", c.Prune.RandomizedDelay)
		}
	}
}

func decodeTLS(dc *dec, c *Cluster, b *hcl.Block) {
	content, d := b.Body.Content(tlsSchema)
	dc.diags = append(dc.diags, d...)
	var validity string
	if r, ok := dc.str(content.Attributes, "validity", "tls.validity", &validity); ok {
		dd, err := time.ParseDuration(validity)
		switch {
		case err != nil:
			dc.errf(r, "Invalid validity", "tls.validity %q is not a duration like \"8760h\" (one year).", validity)
		case dd < 24*time.Hour:
			dc.errf(r, "Validity too short", "tls.validity must be at least 24h: certificates are renewed when a third of their life is left, and each renewal restarts the engines.")
		case dd%time.Hour != 0:
			dc.errf(r, "Validity not in whole hours", "tls.validity %q: write a whole number of hours, such as %q.", validity, fmt.Sprintf("%dh", int(dd.Hours())))
		case dd > 10*365*24*time.Hour:
			dc.errf(r, "Validity too long", "tls.validity cannot exceed the CA's lifetime of 10 years (87600h).")
		default:
			c.TLS.ValidityHours = int(dd.Hours())
		}
	}
	var renew string
	if r, ok := dc.str(content.Attributes, "renew_before", "tls.renew_before", &renew); ok {
		dd, err := time.ParseDuration(renew)
		switch {
		case err != nil:
			dc.errf(r, "Invalid renewal window", "tls.renew_before %q is not a duration like \"720h\" (30 days).", renew)
		case dd < time.Hour:
			dc.errf(r, "Renewal window too short", "tls.renew_before must be at least 1h.")
		case dd%time.Hour != 0:
			dc.errf(r, "Renewal window not in whole hours", "tls.renew_before %q: write a whole number of hours, such as %q.", renew, fmt.Sprintf("%dh", int(dd.Hours())))
		case int(dd.Hours()) >= c.TLS.ValidityHours:
			dc.errf(r, "Renewal window too long", "tls.renew_before (%s) must be shorter than tls.validity (%dh): every certificate would be renewed at every apply.", renew, c.TLS.ValidityHours)
		default:
			c.TLS.RenewBeforeHours = int(dd.Hours())
		}
	}
	if r, ok := dc.strList(content.Attributes, "extra_names", "tls.extra_names", &c.TLS.ExtraNames); ok {
		for _, n := range c.TLS.ExtraNames {
			if net.ParseIP(n) == nil && (!validDNSName(strings.TrimPrefix(n, "*.")) || len(n) > 253) {
				dc.errf(r, "Invalid name", "%q is neither a DNS name nor an IP address.", n)
			}
		}
	}
	if r, ok := dc.strList(content.Attributes, "allowed_cidrs", "tls.allowed_cidrs", &c.TLS.AllowedCIDRs); ok {
		for i, n := range c.TLS.AllowedCIDRs {
			if a, err := netip.ParseAddr(n); err == nil && a.Zone() == "" {
				c.TLS.AllowedCIDRs[i] = netip.PrefixFrom(a, a.BitLen()).String() // one address, as firewall_allow.from takes it
			} else if _, _, err := net.ParseCIDR(n); err != nil {
				dc.errf(r, "Invalid CIDR", "%q is neither a CIDR block like \"203.0.113.0/24\" nor an address.", n)
			}
		}
	}
}

func decodeHardening(dc *dec, c *Cluster, b *hcl.Block) {
	h := &c.Hardening
	h.Profile = "default"
	var attrs hcl.Attributes
	var rules hcl.Blocks
	if b != nil {
		content, d := b.Body.Content(hardeningSchema)
		dc.diags = append(dc.diags, d...)
		attrs = content.Attributes
		rules = content.Blocks
		if r, ok := dc.str(attrs, "profile", "hardening.profile", &h.Profile); ok && h.Profile != "default" && h.Profile != "off" {
			dc.errf(r, "Invalid hardening profile", "hardening.profile is %q; use \"default\" or \"off\".", h.Profile)
		}
	}
	on := h.Profile != "off"
	h.SSH, h.Kernel, h.Firewall, h.Daemon, h.Audit, h.Updates, h.OverlayEncryption = on, on, on, on, on, on, on
	for name, dst := range map[string]*bool{
		"ssh": &h.SSH, "kernel": &h.Kernel, "firewall": &h.Firewall, "daemon": &h.Daemon, "audit": &h.Audit,
		"updates": &h.Updates, "auto_reboot": &h.AutoReboot, "user_namespaces": &h.UserNamespaces, "overlay_encryption": &h.OverlayEncryption,
	} {
		dc.boolean(attrs, name, "hardening."+name, dst)
	}
	if h.AutoReboot && !h.Updates {
		dc.warnf(dc.ranges["hardening.auto_reboot"], "Auto reboot without updates", "hardening.auto_reboot only matters when hardening.updates is on.")
	}
	for _, k := range []struct {
		name string
		dst  *[]string
		what string
	}{{"ssh_users", &h.SSHUsers, "user"}, {"ssh_groups", &h.SSHGroups, "group"}} {
		r, ok := dc.strList(attrs, k.name, "hardening."+k.name, k.dst)
		if !ok {
			continue
		}
		seen := map[string]bool{}
		for _, n := range *k.dst {
			switch {
			case !userRe.MatchString(n):
				dc.errf(r, "Invalid "+k.what+" name", "hardening.%s: %q is not a %s name sshd can match: use lowercase letters, digits, '_' and '-', starting with a letter or '_'.", k.name, n, k.what)
			case seen[n]:
				dc.errf(r, "Duplicate "+k.what, "hardening.%s lists %q twice.", k.name, n)
			case k.name == "ssh_users" && n == "root":
				dc.errf(r, "Root login", "hardening.ssh_users cannot let root in: root login stays off on every host.")
			}
			seen[n] = true
		}
		if len(*k.dst) > 0 && !h.SSH {
			dc.warnf(r, "SSH hardening is off", "hardening.%s only takes effect with hardening.ssh on (without it sshd lets every user in).", k.name)
		}
	}
	for i, rb := range rules {
		h.FirewallAllow = append(h.FirewallAllow, decodeFirewallRule(dc, rb, i))
	}
	if len(rules) > 0 && !h.Firewall {
		dc.warnf(rules[0].DefRange, "Firewall is off", "firewall_allow blocks only take effect with hardening.firewall on (without it nothing is filtered).")
	}
}

func decodeFirewallRule(dc *dec, b *hcl.Block, i int) FirewallRule {
	content, d := b.Body.Content(firewallRuleSchema)
	dc.diags = append(dc.diags, d...)
	path := fmt.Sprintf("hardening.firewall_allow[%d]", i)
	rule := FirewallRule{Protocol: "tcp"}
	if r, ok := dc.str(content.Attributes, "protocol", path+".protocol", &rule.Protocol); ok && rule.Protocol != "tcp" && rule.Protocol != "udp" {
		dc.errf(r, "Invalid protocol", "%s.protocol is %q; use \"tcp\" or \"udp\".", path, rule.Protocol)
	}
	if r, ok := dc.strList(content.Attributes, "ports", path+".ports", &rule.Ports); !ok || len(rule.Ports) == 0 {
		if r == (hcl.Range{}) {
			r = b.DefRange
		}
		dc.errf(r, "Missing ports", "%s needs ports = [443] or [\"9100-9110\"].", path)
	} else {
		for _, p := range rule.Ports {
			if !validPortRange(p) {
				dc.errf(r, "Invalid port", "%s.ports: %q is not a port (1-65535) or a range \"low-high\".", path, p)
			}
		}
	}
	if r, ok := dc.strList(content.Attributes, "from", path+".from", &rule.From); !ok || len(rule.From) == 0 {
		if r == (hcl.Range{}) {
			r = b.DefRange
		}
		dc.errf(r, "Missing sources", "%s needs from = [\"203.0.113.0/24\"]: the addresses the ports open to (\"0.0.0.0/0\" and \"::/0\" for anyone, said explicitly).", path)
	} else {
		for _, f := range rule.From {
			if _, err := netip.ParsePrefix(f); err != nil {
				if _, err := netip.ParseAddr(f); err != nil {
					dc.errf(r, "Invalid source", "%s.from: %q is neither a CIDR block nor an address.", path, f)
				}
			}
		}
		if pub := publicSources(rule.From); len(pub) > 0 {
			for _, sp := range swarmPorts {
				if sp.proto == rule.Protocol && portsCover(rule.Ports, sp.port) {
					dc.warnf(b.DefRange, "Cluster port open to the internet", "%s opens %d/%s (%s) to %s: %s", path, sp.port, sp.proto, sp.what, strings.Join(pub, ", "), sp.risk)
				}
			}
		}
	}
	return rule
}

// swarmPorts are the ports the host firewall keeps to the cluster (and
// 2376 to tls.allowed_cidrs): a firewall_allow rule that opens one of them
// to public addresses is warned about.
var swarmPorts = []struct {
	port        int
	proto, what string
	risk        string
}{
	{2376, "tcp", "the engine's TLS API", "the firewall admits it from the cluster and tls.allowed_cidrs; this rule widens that (client certificates still guard it)."},
	{2377, "tcp", "swarm management", "the firewall admits it from the cluster's machines; opened wider, anyone may try to join or probe the managers."},
	{7946, "tcp", "swarm gossip", "the firewall admits it from the cluster's machines; opened wider, anyone may talk to the nodes' gossip."},
	{7946, "udp", "swarm gossip", "the firewall admits it from the cluster's machines; opened wider, anyone may talk to the nodes' gossip."},
	{4789, "udp", "the overlay network's VXLAN", "the firewall admits it from the cluster's machines; VXLAN is unauthenticated, so anyone it is opened to may inject packets into the overlay networks."},
}

// publicSources lists the sources that are not private, loopback or
// link-local addresses ("0.0.0.0/0", "203.0.113.0/24").
func publicSources(from []string) []string {
	var pub []string
	for _, f := range from {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, err := netip.ParseAddr(f)
			if err != nil {
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		a := p.Masked().Addr()
		private := (a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast()) && p.Bits() >= privateBits(a)
		if !private {
			pub = append(pub, f)
		}
	}
	return pub
}

// privateBits is the prefix length of the private block holding a: a
// shorter prefix ("10.0.0.0/7") reaches past it.
func privateBits(a netip.Addr) int {
	for _, b := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128"} {
		if p := netip.MustParsePrefix(b); p.Contains(a) {
			return p.Bits()
		}
	}
	return a.BitLen()
}

// portsCover reports whether the rule's ports ("443", "9100-9110") include port.
func portsCover(ports []string, port int) bool {
	for _, s := range ports {
		lo, hi, isRange := strings.Cut(s, "-")
		a, err := parsePort(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = parsePort(hi); err != nil {
				continue
			}
		}
		if a <= port && port <= b {
			return true
		}
	}
	return false
}

// validPortRange accepts "443" and "9100-9110".
func validPortRange(s string) bool {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := parsePort(lo)
	if err != nil || a == 0 {
		return false
	}
	if !isRange {
		return true
	}
	b, err := parsePort(hi)
	return err == nil && b >= a
}

func decodeSwarm(dc *dec, c *Cluster, b *hcl.Block) {
	content, d := b.Body.Content(swarmSchema)
	dc.diags = append(dc.diags, d...)
	dc.boolean(content.Attributes, "autolock", "swarm.autolock", &c.Swarm.Autolock)
	var expiry string
	if r, ok := dc.str(content.Attributes, "node_cert_expiry", "swarm.node_cert_expiry", &expiry); ok {
		dd, err := time.ParseDuration(expiry)
		switch {
		case err != nil:
			dc.errf(r, "Invalid node certificate expiry", "swarm.node_cert_expiry %q is not a duration like \"2160h\" (90 days).", expiry)
		case dd < time.Hour:
			// The engine refuses less than an hour.
			dc.errf(r, "Node certificate expiry too short", "swarm.node_cert_expiry must be at least 1h.")
		default:
			c.Swarm.NodeCertExpiry = dd
		}
	}
}

func decodeSSH(dc *dec, c *Cluster, b *hcl.Block) {
	content, d := b.Body.Content(sshSchema)
	dc.diags = append(dc.diags, d...)
	if r, ok := dc.str(content.Attributes, "user", "ssh.user", &c.SSH.User); ok {
		if c.SSH.User == "root" || !userRe.MatchString(c.SSH.User) {
			dc.errf(r, "Invalid admin user", "ssh.user %q is not allowed: use a lowercase login name other than root (root login is turned off on every host).", c.SSH.User)
		}
	}
	var timeout string
	if r, ok := dc.str(content.Attributes, "connect_timeout", "ssh.connect_timeout", &timeout); ok {
		d, err := time.ParseDuration(timeout)
		switch {
		case err != nil:
			dc.errf(r, "Invalid connect timeout", "ssh.connect_timeout %q is not a duration like \"30s\" or \"5m\".", timeout)
		case d < time.Second || d > time.Hour:
			dc.errf(r, "Connect timeout out of range", "ssh.connect_timeout must be between 1s and 1h.")
		default:
			c.SSH.ConnectTimeout = d
		}
	}
}

// checkNetworks warns when machines of one cluster are spread over driver
// blocks of which one fences its network (drivers.Info.Fenced: the clouds):
// swarm members reach each other on their private addresses, and such a
// driver admits the swarm ports only from its own network, so the swarm
// forms only where the networks are joined.
// Local, generic and libvirt blocks together are fine on one LAN.
func checkNetworks(dc *dec, c *Cluster) {
	var used []string
	cloud := false
	var where hcl.Range
	for _, p := range c.Pools() {
		if p.Count == 0 || p.Driver == "" || slices.Contains(used, p.Driver) {
			continue
		}
		if db, ok := c.Driver(p.Driver); ok {
			if info, _ := drivers.Lookup(db.Type); info.Fenced {
				cloud = true
			}
		}
		if len(used) == 1 {
			where = p.Range
		}
		used = append(used, p.Driver)
	}
	if len(used) < 2 || !cloud {
		return
	}
	var names []string
	for _, n := range used {
		db, _ := c.Driver(n)
		names = append(names, fmt.Sprintf("%q (%s)", n, db.Type))
	}
	dc.warnf(where, "Machines on several networks", "This cluster's machines are on driver blocks %s. Swarm members reach each other on their private addresses (ports 2377, 7946 and 4789), and a cloud driver admits those ports only from inside its own network: the swarm forms only where these networks are joined (VPN, peering) and route each other's private addresses.", strings.Join(names, ", "))
}
