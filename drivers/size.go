package drivers

import (
	"fmt"
	"regexp"
	"strconv"
)

// Resources is a machine's virtual CPUs and memory, for drivers whose
// machines are sized by the spec rather than by a platform's type name
// (local system containers, libvirt VMs).
type Resources struct {
	CPUs      int
	MemoryMiB int
}

func (r Resources) String() string {
	if r.MemoryMiB%1024 == 0 {
		return fmt.Sprintf("%dcpu-%dg", r.CPUs, r.MemoryMiB/1024)
	}
	return fmt.Sprintf("%dcpu-%dm", r.CPUs, r.MemoryMiB)
}

var (
	sizeRe      = regexp.MustCompile(`^([1-9][0-9]{0,2})cpu-([1-9][0-9]{0,6})([mg])$`)
	sizeShapeRe = regexp.MustCompile(`^([0-9]+)cpu-([0-9]+)([mg])$`)
)

// ParseSize reads a pool's `size` in the form "<cpus>cpu-<memory>" where
// memory ends in g (GiB) or m (MiB): "2cpu-2g", "1cpu-512m". The limits
// (at most 999 CPUs, at least 128 MiB, at most 4 TiB) catch typos, not
// platforms: a driver checks what its host can give in Preflight.
func ParseSize(s string) (Resources, error) {
	m := sizeRe.FindStringSubmatch(s)
	if m == nil {
		// The right shape with numbers out of range says so.
		if f := sizeShapeRe.FindStringSubmatch(s); f != nil {
			if n, err := strconv.Atoi(f[1]); err != nil || n < 1 || n > 999 {
				return Resources{}, fmt.Errorf("size %q: the CPU count must be from 1 to 999", s)
			}
			return Resources{}, fmt.Errorf("size %q: memory must be between 128m and 4096g", s)
		}
		return Resources{}, fmt.Errorf("size %q: want <cpus>cpu-<memory> with memory in g or m, e.g. \"2cpu-2g\" or \"1cpu-512m\"", s)
	}
	cpus, _ := strconv.Atoi(m[1])
	mem, _ := strconv.Atoi(m[2])
	if m[3] == "g" {
		mem *= 1024
	}
	if mem < 128 || mem > 4<<20 {
		return Resources{}, fmt.Errorf("size %q: memory must be between 128m and 4096g", s)
	}
	return Resources{CPUs: cpus, MemoryMiB: mem}, nil
}
