package drivers

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Resources{
		"2cpu-2g":    {2, 2048},
		"1cpu-512m":  {1, 512},
		"16cpu-64g":  {16, 65536},
		"1cpu-128m":  {1, 128},
		"999cpu-1g":  {999, 1024},
		"4cpu-4096g": {4, 4 << 20},
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if back, err := ParseSize(got.String()); err != nil || back != got {
			t.Errorf("round trip %q -> %q: %+v %v", in, got.String(), back, err)
		}
	}
	for _, bad := range []string{"", "2cpu", "2g", "0cpu-1g", "2cpu-0g", "2cpu-64m", "2cpu-5000g", "2 cpu-2g", "2CPU-2G", "2cpu-2gb", "-1cpu-2g", "2cpu-2g ", "1000cpu-1g"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

// TestParseSizeSaysWhat: a size of the right shape with a number out of
// range says which number, not that the format is wrong.
func TestParseSizeSaysWhat(t *testing.T) {
	for in, want := range map[string]string{
		"0cpu-0g":         "CPU count must be from 1 to 999",
		"99999cpu-99999g": "CPU count must be from 1 to 999",
		"2cpu-0g":         "memory must be between",
		"2cpu-99999999g":  "memory must be between",
		"2 cpus":          "want <cpus>cpu-<memory>",
	} {
		if _, err := ParseSize(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSize(%q): %v, want %q", in, err, want)
		}
	}
}
