package spec

import (
	"strings"
	"testing"
)

func TestCheckLogAddress(t *testing.T) {
	for _, c := range []struct {
		opt, v string
		ok     bool
	}{
		{"gelf-address", "udp://graylog.internal:12201", true},
		{"gelf-address", "tcp://10.0.0.5:12201", true},
		{"gelf-address", "udp://graylog.internal", false},
		{"gelf-address", "graylog.internal:12201", false},
		{"gelf-address", "http://graylog:12201", false},
		{"syslog-address", "tcp+tls://logs.internal:6514", true},
		{"syslog-address", "udp://logs.internal", true}, // the engine adds 514
		{"syslog-address", "unix:///dev/log", true},
		{"syslog-address", "unixgram://dev/log", false},
		{"syslog-address", "tcp://:514", false},
		{"fluentd-address", "fluent.internal:24224", true},
		{"fluentd-address", "tcp://[fd00::5]:24224", true},
		{"fluentd-address", "unix:///var/run/fluent.sock", true},
		{"fluentd-address", "udp://fluent:24224", false},
		{"fluentd-address", "fluent:0", false},
	} {
		if msg := checkLogAddress(c.opt, c.v); (msg == "") != c.ok {
			t.Errorf("%s %q: %q, want ok=%v", c.opt, c.v, msg, c.ok)
		}
	}
}

func TestAWSLogsOnAWS(t *testing.T) {
	c, diags := LoadBytes("a.hcl", []byte(`name = "a"
driver "aws" {}
managers { count = 1 }
logging {
  driver         = "awslogs"
  options        = { awslogs-region = "eu-west-1", awslogs-group = "demo" }
  retention_days = 14
}
`), Vars{})
	if diags.HasErrors() || c == nil {
		t.Fatalf("diags %v", diags)
	}
	if l := c.Logging.Cloud(); l == nil || l.Group != "demo" || l.Region != "eu-west-1" || l.RetentionDays != 14 {
		t.Errorf("cloud logs %+v", l)
	}
	_, diags = LoadBytes("a.hcl", []byte(`name = "a"
driver "aws" {}
managers { count = 1 }
logging {
  driver         = "awslogs"
  options        = { awslogs-region = "eu-west-1", awslogs-group = "demo" }
  retention_days = 10
}
`), Vars{})
	if !diags.HasErrors() || !strings.Contains(diags.Error(), "a.hcl:7,20-22: Invalid retention") {
		t.Errorf("retention 10: %v", diags)
	}
	if l := (Logging{Driver: "json-file"}).Cloud(); l != nil {
		t.Errorf("json-file ships to the cloud: %+v", l)
	}
}

// TestLogOptionsTheEngineTakes: values the engine's log drivers accept
// pass validate (the goldens bad-log-* hold the refused ones).
func TestLogOptionsTheEngineTakes(t *testing.T) {
	for _, l := range []string{
		`driver = "gelf"` + "\n" + `options = { gelf-address = "udp://10.0.0.9:12201", gelf-compression-type = "zlib", gelf-compression-level = "-1" }`,
		`driver = "gelf"` + "\n" + `options = { gelf-address = "tcp://10.0.0.9:12201", gelf-tcp-max-reconnect = "0", gelf-tcp-reconnect-delay = "3" }`,
		`driver = "syslog"` + "\n" + `options = { syslog-facility = "local3", syslog-format = "rfc5424micro" }`,
		`driver = "syslog"` + "\n" + `options = { syslog-facility = "23" }`,
		`driver = "fluentd"` + "\n" + `options = { fluentd-buffer-limit = "8MB", fluentd-retry-wait = "500ms", fluentd-max-retries = "10" }`,
	} {
		_, diags := LoadBytes("l.hcl", []byte("name = \"l\"\nmanagers { count = 1 }\nlogging {\n"+l+"\n}\n"), Vars{})
		if diags.HasErrors() {
			t.Errorf("%s: %v", l, diags)
		}
	}
}
