package spec

import (
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/go-units"
	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/drivers"
)

// logDrivers lists the engine log drivers provision configures and the
// options each accepts (from the engine's documentation), with a check per
// option value where a wrong value would only fail on the host.
var logDrivers = map[string]struct {
	options  []string
	required []string
}{
	"json-file": {options: []string{"max-size", "max-file", "compress", "labels", "labels-regex", "env", "env-regex", "tag"}},
	"local":     {options: []string{"max-size", "max-file", "compress"}},
	"journald":  {options: []string{"tag", "labels", "labels-regex", "env", "env-regex"}},
	"syslog": {options: []string{"syslog-address", "syslog-facility", "syslog-tls-ca-cert", "syslog-tls-cert", "syslog-tls-key",
		"syslog-tls-skip-verify", "syslog-format", "tag", "labels", "labels-regex", "env", "env-regex"}},
	"gelf": {options: []string{"gelf-address", "gelf-compression-type", "gelf-compression-level", "gelf-tcp-max-reconnect",
		"gelf-tcp-reconnect-delay", "tag", "labels", "labels-regex", "env", "env-regex"}, required: []string{"gelf-address"}},
	"fluentd": {options: []string{"fluentd-address", "fluentd-async", "fluentd-buffer-limit", "fluentd-retry-wait", "fluentd-max-retries",
		"fluentd-sub-second-precision", "fluentd-request-ack", "tag", "labels", "labels-regex", "env", "env-regex"}},
	"awslogs": {options: []string{"awslogs-region", "awslogs-group", "awslogs-stream", "awslogs-create-group", "awslogs-datetime-format",
		"awslogs-multiline-pattern", "awslogs-credentials-endpoint", "awslogs-force-flush-interval-seconds", "awslogs-max-buffered-events",
		"awslogs-format", "tag"}, required: []string{"awslogs-region", "awslogs-group"}},
	"none": {},
}

var (
	logSizeRe = regexp.MustCompile(`^[0-9]+[kmg]?$`)
	boolWords = map[string]bool{"true": true, "false": true, "1": true, "0": true}
)

// LogDrivers lists the supported log drivers.
func LogDrivers() []string { return sortedKeys(logDrivers) }

func defaultLogOptions(driver string) map[string]string {
	switch driver {
	case "json-file", "local":
		return map[string]string{"max-size": "10m", "max-file": "3"}
	}
	return map[string]string{}
}

func decodeLogging(dc *dec, c *Cluster, b *hcl.Block) {
	content, d := b.Body.Content(loggingSchema)
	dc.diags = append(dc.diags, d...)
	dr, _ := dc.str(content.Attributes, "driver", "logging.driver", &c.Logging.Driver)
	def, ok := logDrivers[c.Logging.Driver]
	if !ok {
		dc.errf(dr, "Unknown log driver", "logging.driver %q is not supported. Use one of: %s.", c.Logging.Driver, strings.Join(LogDrivers(), ", "))
		return
	}
	opts := map[string]string{}
	or, given := dc.strMap(content.Attributes, "options", "logging.options", &opts)
	if !given {
		or = b.DefRange
	}
	for _, k := range sortedKeys(opts) {
		v := opts[k]
		allowed := false
		for _, o := range def.options {
			allowed = allowed || o == k
		}
		if !allowed {
			hint := "it takes no options"
			if len(def.options) > 0 {
				hint = "it accepts: " + strings.Join(def.options, ", ")
			}
			dc.errf(or, "Unknown log option", "The %s log driver has no option %q; %s.", c.Logging.Driver, k, hint)
			continue
		}
		switch {
		case k == "max-size" && !logSizeRe.MatchString(v):
			dc.errf(or, "Invalid log option", "max-size %q must be a size like \"10m\" (k, m or g).", v)
		case k == "max-size" && strings.Trim(v, "0kmg") == "":
			dc.errf(or, "Invalid log option", "max-size %q must be more than zero: the engine refuses to start with it. Remove max-size to keep logs unbounded.", v)
		case k == "labels-regex" || k == "env-regex":
			if _, err := regexp.Compile(v); err != nil {
				dc.errf(or, "Invalid log option", "%s %q is not a regular expression the engine accepts (Go syntax): %v.", k, v, err)
			}
		case k == "gelf-compression-level" || k == "gelf-compression-type":
			// The engine's gelf driver: compression on UDP only, level -1 (default) to 9.
			n, err := strconv.Atoi(v)
			switch {
			case gelfScheme(opts) != "udp":
				dc.errf(or, "Invalid log option", "%s applies to a udp:// gelf-address only: the engine refuses it with %q.", k, opts["gelf-address"])
			case k == "gelf-compression-level" && (err != nil || n < -1 || n > 9):
				dc.errf(or, "Invalid log option", "gelf-compression-level %q must be a whole number from -1 (the default) to 9.", v)
			case k == "gelf-compression-type" && v != "gzip" && v != "zlib" && v != "none":
				dc.errf(or, "Invalid log option", "gelf-compression-type %q must be gzip, zlib or none.", v)
			}
		case k == "gelf-tcp-max-reconnect" || k == "gelf-tcp-reconnect-delay":
			if gelfScheme(opts) != "tcp" {
				dc.errf(or, "Invalid log option", "%s applies to a tcp:// gelf-address only: the engine refuses it with %q.", k, opts["gelf-address"])
			} else if n, err := strconv.Atoi(v); err != nil || n < 0 {
				dc.errf(or, "Invalid log option", "%s %q must be a whole number, 0 or more.", k, v)
			}
		case k == "syslog-facility":
			if n, err := strconv.Atoi(v); !slices.Contains(syslogFacilities, v) && (err != nil || n < 0 || n > 23) {
				dc.errf(or, "Invalid log option", "syslog-facility %q must be one of %s, or a number from 0 to 23.", v, strings.Join(syslogFacilities, ", "))
			}
		case k == "syslog-format":
			if v != "rfc3164" && v != "rfc5424" && v != "rfc5424micro" {
				dc.errf(or, "Invalid log option", "syslog-format %q must be rfc3164, rfc5424 or rfc5424micro (unset: the engine's Unix format).", v)
			}
		case k == "fluentd-buffer-limit":
			if n, err := units.RAMInBytes(v); err != nil || n <= 0 {
				dc.errf(or, "Invalid log option", "fluentd-buffer-limit %q must be a size such as \"8m\" or \"1g\".", v)
			}
		case k == "fluentd-retry-wait":
			if d, err := time.ParseDuration(v); err != nil || d <= 0 {
				dc.errf(or, "Invalid log option", "fluentd-retry-wait %q must be a duration such as \"1s\" or \"500ms\".", v)
			}
		case k == "max-file" || k == "fluentd-max-retries" || k == "awslogs-max-buffered-events" || k == "awslogs-force-flush-interval-seconds":
			if n, err := strconv.Atoi(v); err != nil || n < 0 || (k == "max-file" && n < 1) {
				dc.errf(or, "Invalid log option", "%s %q must be a positive whole number.", k, v)
			}
		case k == "compress" || k == "fluentd-async" || k == "awslogs-create-group" || k == "syslog-tls-skip-verify" || k == "fluentd-sub-second-precision" || k == "fluentd-request-ack":
			if !boolWords[v] {
				dc.errf(or, "Invalid log option", "%s %q must be true or false.", k, v)
			}
		case k == "gelf-address" || k == "syslog-address" || k == "fluentd-address":
			if msg := checkLogAddress(k, v); msg != "" {
				dc.errf(or, "Invalid log option", "%s %q %s.", k, v, msg)
			}
		}
	}
	if (c.Logging.Driver == "json-file" || c.Logging.Driver == "local") && opts["compress"] != "" && boolWords[opts["compress"]] && (opts["compress"] == "true" || opts["compress"] == "1") {
		if n, err := strconv.Atoi(opts["max-file"]); err == nil && n < 2 {
			dc.errf(or, "Invalid log option", "compress = %q needs max-file of 2 or more: the engine refuses compression with a single file.", opts["compress"])
		}
	}
	for _, req := range def.required {
		if _, ok := opts[req]; !ok {
			dc.errf(or, "Missing log option", "The %s log driver needs the option %q.", c.Logging.Driver, req)
		}
	}
	if c.Logging.Driver == "json-file" || c.Logging.Driver == "local" {
		for k, v := range defaultLogOptions(c.Logging.Driver) {
			if _, ok := opts[k]; !ok {
				opts[k] = v // rotation is on unless the file says otherwise
			}
		}
	}
	c.Logging.Options = opts
	if r, ok := dc.integer(content.Attributes, "retention_days", "logging.retention_days", &c.Logging.RetentionDays); ok {
		if c.Logging.Driver != "awslogs" {
			dc.warnf(r, "Retention without a cloud log group", "logging.retention_days applies to the awslogs log group the aws driver makes; with the %s log driver it does nothing.", c.Logging.Driver)
		} else if !slices.Contains(cloudWatchRetention, c.Logging.RetentionDays) {
			dc.errf(r, "Invalid retention", "CloudWatch Logs keeps events for one of %v days, or 0 for ever; not %d.", cloudWatchRetention, c.Logging.RetentionDays)
		}
	}
	if r, ok := dc.str(content.Attributes, "journald_max_use", "logging.journald_max_use", &c.Logging.JournaldMaxUse); ok {
		if !regexp.MustCompile(`^[0-9]+[KMGT]?$`).MatchString(c.Logging.JournaldMaxUse) {
			dc.errf(r, "Invalid size", "logging.journald_max_use %q must be a size like \"500M\" or \"2G\".", c.Logging.JournaldMaxUse)
		}
	}
}

// syslogFacilities are the facility names the engine's syslog driver knows.
var syslogFacilities = []string{"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
	"local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"}

// gelfScheme is the scheme of the gelf-address option ("udp", "tcp").
func gelfScheme(opts map[string]string) string {
	scheme, _, _ := strings.Cut(opts["gelf-address"], "://")
	return scheme
}

// logAddressSchemes are the schemes each log address accepts; "" is a
// plain host:port (fluentd).
var logAddressSchemes = map[string][]string{
	"gelf-address":    {"udp", "tcp"},
	"syslog-address":  {"udp", "tcp", "tcp+tls", "unix", "unixgram"},
	"fluentd-address": {"", "tcp", "unix"},
}

// checkLogAddress says what is wrong with a log driver's address, as the
// engine would parse it when a container starts: a known scheme, then a
// host and a port in range (network schemes) or an absolute path (unix).
func checkLogAddress(opt, v string) string {
	schemes := logAddressSchemes[opt]
	scheme, rest, ok := strings.Cut(v, "://")
	if !ok {
		scheme, rest = "", v
	}
	if !slices.Contains(schemes, scheme) {
		var want []string
		for _, s := range schemes {
			if s == "" {
				want = append(want, "host:port")
			} else {
				want = append(want, s+"://")
			}
		}
		return "must start with " + strings.Join(want, ", ")
	}
	if scheme == "unix" || scheme == "unixgram" {
		if !strings.HasPrefix(rest, "/") {
			return "must name an absolute socket path (unix:///run/log.sock)"
		}
		return ""
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		if opt == "syslog-address" && !strings.Contains(rest, ":") && rest != "" {
			return "" // the engine adds syslog's port 514
		}
		return "must give a host and a port (host:port after the scheme)"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "has no valid port"
	}
	if host == "" || strings.ContainsAny(host, "/ ") {
		return "has no valid host"
	}
	return ""
}

// cloudWatchRetention are the retention periods CloudWatch Logs accepts, in
// days (0: never expire).
var cloudWatchRetention = []int{0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}

// Cloud is where the engines ship logs in the cloud (drivers.CloudLogs
// fields), nil unless the log driver is awslogs.
func (l Logging) Cloud() *drivers.CloudLogs {
	if l.Driver != "awslogs" {
		return nil
	}
	return &drivers.CloudLogs{Group: l.Options["awslogs-group"], Region: l.Options["awslogs-region"], RetentionDays: l.RetentionDays}
}

// checkLogPlatform checks the log driver against where the machines run:
// awslogs needs AWS credentials in every engine. On AWS the driver gives
// the instances a role allowed to write to the group; machines outside AWS
// have none, so the spec must name where the engine gets them
// (awslogs-credentials-endpoint).
func checkLogPlatform(dc *dec, c *Cluster) {
	if c.Logging.Driver != "awslogs" {
		return
	}
	r := c.Ranges["logging.driver"]
	var outside []string
	for _, p := range c.Pools() {
		d, ok := c.Driver(p.Driver)
		if !ok || p.Count == 0 {
			continue
		}
		if d.Type != "aws" {
			outside = append(outside, p.Name+" ("+d.Type+")")
		}
	}
	if len(outside) > 0 && c.Logging.Options["awslogs-credentials-endpoint"] == "" {
		dc.errf(r, "No AWS credentials for awslogs", "The awslogs log driver needs AWS credentials in each engine, and the pools %s run outside AWS, where no instance role provides them. Name where the engine gets them with options { awslogs-credentials-endpoint = \"/path\" } (a credentials endpoint reachable from the hosts), or use another log driver there.", strings.Join(outside, ", "))
	}
}
