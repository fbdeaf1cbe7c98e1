package spec

import (
	"archive/zip"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// calendarCorpus is every calendar expression the agreement test tries: the
// forms the README and systemd.time(7) show, the forms issue 12 found
// accepted by validate and refused by every host, and a generated grid of
// weekday, date, time and zone parts.
func calendarCorpus() []string {
	out := []string{
		"daily", "Weekly", "DAILY", "annually", "semiannually", "quarterly", "minutely", "hourly", "monthly", "yearly",
		"Sun *-*-* 03:00", "Mon..Fri 02:30", "*-*-* 02,14:30:00", "Sat,Sun 04:00 UTC", "*-*-01 00:00:00",
		"2026-12-24 18:00", "*:0/15", "12-25 10:00 Europe/Berlin", "Mon *-*~1 03:00", "*-05~07/1", "Mon *-05~07/1",
		"*-02~03", "*-*~1..3", "*-*~1,2", "*~1", "2026-*~1", "03:00:00.5", "*-*-* *:*:*", "00/2:00", "*-1/2-1",
		"Mon 2026-01-01 03:00 UTC", "*:0/15 UTC", "*-*-01 03:00 Asia/Kolkata", "03:00 America/Argentina/Buenos_Aires",
		"03:00 Etc/GMT+5", "Mon..Sun", "Monday,Wednesday 12:00",
		// Refused by systemd 252: provision must refuse them too.
		"Mon *-*-~1 03:00", "daily\n", "daily ", " daily", "Sun\t03:00", "Sun  03:00", "*-*~1/1", "*-*~0", "*-*~31",
		"03:00 Mars/Base", "Sun..Mon 03:00", "03:00 Mon", "1969-01-01", "2200-01-01", "*-*-* 24:00", "03:60",
		"*:*/0", "sometimes", "", "03:00 04:00", "*-13-01", "Funday 03:00",
		// Accepted by systemd, refused by provision (host-dependent or ambiguous).
		"03:00 US/Pacific", "03:00 EST", "03:00 utc", "hourly UTC", "Mon-Fri 03:00",
	}
	days := []string{"", "Mon ", "Sat,Sun ", "Mon..Fri ", "Tue..Thu,Sun "}
	dates := []string{"", "*-*-* ", "*-*-01 ", "2027-02-28 ", "*-02~03 ", "12-25 ", "*-*-1..7 ", "*-1/3-1 ", "*-*~1..3 "}
	times := []string{"03:00", "*:0/15", "02,14:30", "00:00:00.25", "4..6:00"}
	zones := []string{"", " UTC", " Pacific/Auckland"}
	for _, d := range days {
		for _, dt := range dates {
			for _, t := range times {
				for _, z := range zones {
					out = append(out, d+dt+t+z)
				}
			}
		}
	}
	return out
}

// canonicalZones lists the zone names in Go's time zone database (the one
// CheckCalendar consults) under the canonical areas.
func canonicalZones(t *testing.T) []string {
	zr, err := zip.OpenReader(filepath.Join(runtime.GOROOT(), "lib", "time", "zoneinfo.zip"))
	if err != nil {
		t.Logf("no zoneinfo.zip in GOROOT (%v): zones are checked from the corpus only", err)
		return nil
	}
	defer zr.Close()
	var out []string
	for _, f := range zr.File {
		if area, _, ok := strings.Cut(f.Name, "/"); ok && zoneAreas[area] && !strings.HasSuffix(f.Name, "/") {
			out = append(out, f.Name)
		}
	}
	sort.Strings(out)
	return out
}

var allZones = flag.Bool("allzones", false, "TestCalendarAgreesWithSystemd: check every time zone, not a tenth")

var failedCal = regexp.MustCompile(`(?m)^Failed to parse calendar specification '(.*)': `)

// systemdRefuses runs the expressions through `systemd-analyze calendar` in
// one call and returns those it refuses.
func systemdRefuses(t *testing.T, bin string, exprs []string) map[string]bool {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, append([]string{"calendar"}, exprs...)...)
	cmd.Stdout, cmd.Stderr = nil, &stderr
	cmd.Env = append(os.Environ(), "LC_ALL=C", "SYSTEMD_PAGER=", "TZ=UTC")
	_ = cmd.Run() // non-zero when any was refused: read which
	out := map[string]bool{}
	for _, m := range failedCal.FindAllStringSubmatch(stderr.String(), -1) {
		out[m[1]] = true
	}
	return out
}

// TestCalendarAgreesWithSystemd is issue 12's proof that validate and the
// hosts agree on prune schedules: every expression CheckCalendar accepts
// (from the corpus and one per canonical time zone) is accepted by
// `systemd-analyze calendar` of systemd 252, the version on Debian 12 hosts
// (this machine's own; set PROVISION_SYSTEMD_ANALYZE to use another).
func TestCalendarAgreesWithSystemd(t *testing.T) {
	bin := os.Getenv("PROVISION_SYSTEMD_ANALYZE")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("systemd-analyze"); err != nil {
			t.Skip("systemd-analyze not found (apt-get install systemd): cannot compare with systemd")
		}
	}
	ver, _ := exec.Command(bin, "--version").Output()
	t.Logf("comparing with %s", strings.SplitN(string(ver), "\n", 2)[0])

	var accepted []string
	refusedByUs := 0
	for _, e := range calendarCorpus() {
		if CheckCalendar(e) == nil {
			accepted = append(accepted, e)
		} else {
			refusedByUs++
		}
	}
	// systemd-analyze takes ~4 ms per zone: every zone with -allzones, a
	// tenth of them (a different tenth each day) otherwise.
	zones := canonicalZones(t)
	if !*allZones {
		var some []string
		for i := time.Now().YearDay() % 10; i < len(zones); i += 10 {
			some = append(some, zones[i])
		}
		zones = some
	}
	for _, z := range zones {
		e := "*-*-* 03:00 " + z
		if CheckCalendar(e) == nil {
			accepted = append(accepted, e)
		}
	}
	if len(accepted) < 500 || refusedByUs < 25 {
		t.Fatalf("corpus too small: %d accepted, %d refused", len(accepted), refusedByUs)
	}
	for e := range systemdRefuses(t, bin, accepted) {
		t.Errorf("CheckCalendar accepts %q, systemd refuses it", e)
	}
	t.Logf("%d expressions accepted by both (%d zones), %d refused by provision", len(accepted), len(zones), refusedByUs)

	// The forms the issue found must be refused, each with a reason.
	for _, e := range []string{"daily\n", "daily ", "Sun\t03:00", "03:00 Mars/Base", "Mon *-*-~1 03:00"} {
		err := CheckCalendar(e)
		if err == nil {
			t.Errorf("CheckCalendar(%q) accepted", e)
			continue
		}
		if !systemdRefuses(t, bin, []string{e})[e] && !strings.ContainsAny(e, "\n\t ") {
			t.Errorf("%q: refused by provision (%v) but systemd accepts it: the corpus is wrong", e, err)
		}
		if msg := fmt.Sprint(err); msg == "" {
			t.Errorf("%q: empty reason", e)
		}
	}
}
