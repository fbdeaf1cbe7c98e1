package hostos

import (
	"bufio"
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// LynisInstall installs Lynis from the distro's packages when it is
// missing (it is kept for the next audit) and prints "installed" when it
// did. Run it as root with `sh -s` (stdin) or `sh -c`.
const LynisInstall = `set -e
if ! command -v lynis >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends lynis >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends lynis >/dev/null; }
  echo installed
fi
`

// LynisRun runs a quick system audit into a private report file and prints
// the report (Lynis's key=value report.dat). Run it as root.
const LynisRun = `set -e
d=$(mktemp -d)
lynis audit system --quick --no-colors --report-file "$d/report.dat" --log-file "$d/lynis.log" >/dev/null 2>&1 || true
cat "$d/report.dat"
rm -rf "$d"
`

// LynisScript is LynisInstall then LynisRun: `provision audit` and the
// acceptance test measure hosts with them, so a plain host and a
// provisioned one are measured the same way.
const LynisScript = LynisInstall + LynisRun

// LynisReport is what a Lynis report says about one host.
type LynisReport struct {
	Index       int      `json:"hardening_index"`
	Tests       int      `json:"tests_performed,omitempty"`
	Warnings    []string `json:"warnings"`
	Suggestions []string `json:"suggestions"`
}

// ParseLynisReport reads the key=value report Lynis writes (report.dat).
// Warnings and suggestions come out as "TEST-ID: text (detail)", sorted.
func ParseLynisReport(b []byte) (LynisReport, error) {
	var r LynisReport
	found := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "hardening_index":
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err == nil {
				r.Index, found = n, true
			}
		case "lynis_tests_done":
			r.Tests, _ = strconv.Atoi(strings.TrimSpace(v))
		case "warning[]":
			r.Warnings = append(r.Warnings, lynisItem(v))
		case "suggestion[]":
			r.Suggestions = append(r.Suggestions, lynisItem(v))
		}
	}
	if err := sc.Err(); err != nil {
		return r, fmt.Errorf("read lynis report: %w", err)
	}
	if !found {
		return r, fmt.Errorf("lynis report has no hardening index")
	}
	sort.Strings(r.Warnings)
	sort.Strings(r.Suggestions)
	return r, nil
}

// lynisItem turns "AUTH-9262|Install a PAM module|-|-|" into "AUTH-9262: Install a PAM module".
func lynisItem(v string) string {
	parts := strings.Split(v, "|")
	if len(parts) < 2 {
		return v
	}
	s := parts[0] + ": " + parts[1]
	if len(parts) > 3 && parts[3] != "-" && parts[3] != "" {
		s += " (" + parts[3] + ")"
	}
	return s
}
