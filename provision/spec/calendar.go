package spec

import (
	"fmt"
	"strconv"
	"strings"
)

var calendarShorthands = map[string]bool{
	"minutely": true, "hourly": true, "daily": true, "weekly": true, "monthly": true,
	"yearly": true, "annually": true, "quarterly": true, "semiannually": true,
}

var weekdays = map[string]bool{
	"mon": true, "tue": true, "wed": true, "thu": true, "fri": true, "sat": true, "sun": true,
	"monday": true, "tuesday": true, "wednesday": true, "thursday": true, "friday": true, "saturday": true, "sunday": true,
}

// CheckCalendar checks a systemd OnCalendar expression (systemd.time(7)):
// a shorthand like "daily", or "[WEEKDAYS] [[YYYY-]MM-DD] [HH:MM[:SS]] [TIMEZONE]"
// where each number may be "*", a list "a,b", a range "a..b" or a
// repetition "a/n". It checks the syntax and value ranges; it does not need
// systemd on this machine.
func CheckCalendar(expr string) error {
	fields := strings.Fields(expr)
	if len(fields) == 0 {
		return fmt.Errorf("it is empty")
	}
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
		case strings.Contains(f, "-") && !date && !clock && startsNumeric(f):
			if err := checkDate(f); err != nil {
				return err
			}
			date = true
		case i == len(fields)-1 && (date || clock) && isTimezone(f):
			// A time zone: "UTC" or an IANA name.
		default:
			return fmt.Errorf("%q is not a weekday, date, time or time zone", f)
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

func isTimezone(s string) bool {
	if strings.EqualFold(s, "UTC") {
		return true
	}
	for _, r := range s {
		if !(r == '/' || r == '_' || r == '+' || r == '-' || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return strings.Contains(s, "/")
}

func checkWeekdays(s string) error {
	for _, part := range strings.Split(s, ",") {
		a, b, isRange := strings.Cut(part, "..")
		for _, d := range []string{a, b} {
			if d == "" && !isRange && d == b {
				continue
			}
			if !weekdays[strings.ToLower(d)] {
				return fmt.Errorf("%q is not a weekday (Mon..Sun)", d)
			}
		}
	}
	return nil
}

func checkDate(s string) error {
	parts := strings.Split(s, "-")
	switch len(parts) {
	case 2: // MM-DD
		parts = append([]string{"*"}, parts...)
	case 3:
	default:
		return fmt.Errorf("%q is not a date: write YYYY-MM-DD or MM-DD", s)
	}
	day := parts[2]
	if strings.HasPrefix(day, "~") { // last days of the month
		day = day[1:]
	}
	if err := checkField(parts[0], 1970, 2199, "year"); err != nil {
		return err
	}
	if err := checkField(parts[1], 1, 12, "month"); err != nil {
		return err
	}
	return checkField(day, 1, 31, "day")
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
		sec, _, _ := strings.Cut(parts[2], ".")
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
			if err != nil || n < 1 {
				return fmt.Errorf("%q: the repetition after '/' must be a positive number", item)
			}
		}
		if base == "*" {
			continue
		}
		a, b, isRange := strings.Cut(base, "..")
		for _, v := range []string{a, b} {
			if v == "" && !isRange {
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%q is not a valid %s", item, what)
			}
			if n < lo || n > hi {
				return fmt.Errorf("%s %d is out of range %d..%d", what, n, lo, hi)
			}
		}
	}
	return nil
}
