package spec

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // time zones are checked the same on every operator machine
)

var calendarShorthands = map[string]bool{
	"minutely": true, "hourly": true, "daily": true, "weekly": true, "monthly": true,
	"yearly": true, "annually": true, "quarterly": true, "semiannually": true,
}

// weekdayIndex orders weekday names Mon..Sun (ranges must go forward).
var weekdayIndex = map[string]int{
	"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7,
	"monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6, "sunday": 7,
}

// zoneAreas are the areas of canonical IANA time zone names. Names outside
// them (legacy links like "US/Pacific", abbreviations like "EST") depend on
// which tzdata package a host has installed, so they are refused.
var zoneAreas = map[string]bool{
	"Africa": true, "America": true, "Antarctica": true, "Arctic": true, "Asia": true, "Atlantic": true,
	"Australia": true, "Europe": true, "Indian": true, "Pacific": true, "Etc": true,
}

// CheckCalendar checks a systemd OnCalendar expression (systemd.time(7)) as
// provision accepts it: a shorthand like "daily", or
// "[WEEKDAYS] [[YYYY-]MM-DD] [HH:MM[:SS]] [TIMEZONE]" with single spaces,
// where each number may be "*", a list "a,b", a range "a..b" or a repetition
// "a/n", weekdays are a list or forward range of names, "MM~DD" counts days
// from the end of the month (1..28, no repetition), and the time zone is
// "UTC" or a canonical IANA name ("Europe/Berlin"). Everything it accepts,
// systemd 252 accepts too (TestCalendarAgreesWithSystemd); it refuses some
// forms systemd would take (tabs, several spaces, abbreviations).
func CheckCalendar(expr string) error {
	if expr == "" || strings.TrimSpace(expr) == "" {
		return fmt.Errorf("it is empty")
	}
	for _, r := range expr {
		switch {
		case r == '\n' || r == '\r':
			return fmt.Errorf("it contains a line break")
		case r == '\t':
			return fmt.Errorf("it contains a tab: separate the parts with single spaces")
		case r < 0x20 || r == 0x7f:
			return fmt.Errorf("it contains a control character")
		case r > 0x7e:
			return fmt.Errorf("it contains %q: use ASCII only", r)
		}
	}
	if strings.TrimSpace(expr) != expr {
		return fmt.Errorf("it starts or ends with a space")
	}
	if strings.Contains(expr, "  ") {
		return fmt.Errorf("separate the parts with single spaces")
	}
	fields := strings.Split(expr, " ")
	if len(fields) == 1 && calendarShorthands[strings.ToLower(fields[0])] {
		return nil
	}
	i := 0
	if isWeekdays(fields[0]) {
		if err := checkWeekdays(fields[0]); err != nil {
			return err
		}
		i++
	}
	var date, clock bool
	for ; i < len(fields); i++ {
		f := fields[i]
		switch {
		case strings.Contains(f, ":") && !clock:
			if err := checkTime(f); err != nil {
				return err
			}
			clock = true
		case (strings.Contains(f, "-") || strings.Contains(f, "~")) && !date && !clock && startsNumeric(f):
			if err := checkDate(f); err != nil {
				return err
			}
			date = true
		case i == len(fields)-1 && (date || clock) && !startsNumeric(f):
			if err := checkZone(f); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%q is not a weekday, date, time or time zone where it stands (order: weekdays, date, time, zone)", f)
		}
	}
	if !date && !clock && len(fields) > 1 {
		return fmt.Errorf("it has no date or time")
	}
	return nil
}

func startsNumeric(s string) bool {
	return s != "" && (s[0] == '*' || (s[0] >= '0' && s[0] <= '9'))
}

func isWeekdays(s string) bool {
	return s != "" && (s[0] < '0' || s[0] > '9') && s[0] != '*'
}

func checkZone(s string) error {
	if s == "UTC" {
		return nil
	}
	area, _, ok := strings.Cut(s, "/")
	if !ok || !zoneAreas[area] {
		return fmt.Errorf("time zone %q: use UTC or a canonical zone name such as \"Europe/Berlin\" (legacy names and abbreviations depend on the host's tzdata)", s)
	}
	for _, r := range s {
		if !(r == '/' || r == '_' || r == '+' || r == '-' || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9')) {
			return fmt.Errorf("time zone %q is not a zone name", s)
		}
	}
	if _, err := time.LoadLocation(s); err != nil {
		return fmt.Errorf("unknown time zone %q", s)
	}
	return nil
}

func checkWeekdays(s string) error {
	for _, part := range strings.Split(s, ",") {
		a, b, isRange := strings.Cut(part, "..")
		ia, ok := weekdayIndex[strings.ToLower(a)]
		if !ok {
			return fmt.Errorf("%q is not a weekday (Mon..Sun)", a)
		}
		if isRange {
			ib, ok := weekdayIndex[strings.ToLower(b)]
			if !ok {
				return fmt.Errorf("%q is not a weekday (Mon..Sun)", b)
			}
			if ib < ia {
				return fmt.Errorf("weekday range %q goes backwards: ranges run Mon..Sun", part)
			}
		}
	}
	return nil
}

func checkDate(s string) error {
	last := false
	var parts []string
	if head, day, ok := strings.Cut(s, "~"); ok {
		// [YYYY-]MM~DD: DD days before the end of the month.
		last = true
		if strings.Contains(day, "~") || strings.Contains(day, "-") {
			return fmt.Errorf("%q is not a date: write [YYYY-]MM~DD for days counted from the end of the month", s)
		}
		parts = append(strings.Split(head, "-"), day)
	} else {
		parts = strings.Split(s, "-")
	}
	switch len(parts) {
	case 2: // MM-DD
		parts = append([]string{"*"}, parts...)
	case 3:
	default:
		return fmt.Errorf("%q is not a date: write YYYY-MM-DD, MM-DD or [YYYY-]MM~DD", s)
	}
	if err := checkField(parts[0], 1970, 2199, "year"); err != nil {
		return err
	}
	if err := checkField(parts[1], 1, 12, "month"); err != nil {
		return err
	}
	if last {
		if strings.Contains(parts[2], "/") || parts[2] == "*" {
			return fmt.Errorf("%q: days counted from the end of the month take a number, list or range of 1..28, no repetition", s)
		}
		return checkField(parts[2], 1, 28, "day from the end of the month")
	}
	return checkField(parts[2], 1, 31, "day")
}

func checkTime(s string) error {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return fmt.Errorf("%q is not a time: write HH:MM or HH:MM:SS", s)
	}
	if err := checkField(parts[0], 0, 23, "hour"); err != nil {
		return err
	}
	if err := checkField(parts[1], 0, 59, "minute"); err != nil {
		return err
	}
	if len(parts) == 3 {
		sec, frac, hasFrac := strings.Cut(parts[2], ".")
		if hasFrac && (frac == "" || strings.Trim(frac, "0123456789") != "" || len(frac) > 6 || strings.ContainsAny(sec, ",./*")) {
			return fmt.Errorf("%q: a fraction of a second follows a plain number of seconds (\"05.5\")", parts[2])
		}
		if err := checkField(sec, 0, 59, "second"); err != nil {
			return err
		}
	}
	return nil
}

// checkField checks one numeric field: *, n, a..b, a/n, comma lists of them.
func checkField(s string, lo, hi int, what string) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	for _, item := range strings.Split(s, ",") {
		base, step, hasStep := strings.Cut(item, "/")
		if hasStep {
			n, err := strconv.Atoi(step)
			if err != nil || step == "" || strings.Trim(step, "0123456789") != "" || n < 1 || n > hi {
				return fmt.Errorf("%q: the repetition after '/' must be a positive number up to %d", item, hi)
			}
		}
		if base == "*" {
			continue
		}
		a, b, isRange := strings.Cut(base, "..")
		var vals []int
		for _, v := range []string{a, b} {
			if v == "" && !isRange {
				continue
			}
			if v == "" || strings.Trim(v, "0123456789") != "" || len(v) > 4 {
				return fmt.Errorf("%q is not a valid %s", item, what)
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%q is not a valid %s", item, what)
			}
			if n < lo || n > hi {
				return fmt.Errorf("%s %d is out of range %d..%d", what, n, lo, hi)
			}
			vals = append(vals, n)
		}
		if isRange && len(vals) == 2 && vals[1] < vals[0] {
			return fmt.Errorf("%s range %q goes backwards", what, base)
		}
	}
	return nil
}
