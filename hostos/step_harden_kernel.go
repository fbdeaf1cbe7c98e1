package hostos

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/provision/provision/provision/comm"
)

// harden.kernel: the sysctl drop-in (set at once as well), no core dumps
// and the module blocklist.
func stepHardenKernel() *Step {
	return &Step{
		ID: "harden.kernel",
		Files: []FileRule{
			{Path: PathSysctl, OnChange: func(ctx context.Context, t *Target, f File) error {
				if err := t.remove(ctx, t.present([]string{PathSysctlOld})...); err != nil {
					return err
				}
				return applySysctl(ctx, t, f.Content)
			}},
			{Path: PathSysctlOld, Old: true},
			{Path: PathCoredump}, {Path: PathLimits}, {Path: PathModprobe},
		},
		Enabled: func(c *Config) bool { return c.Hardening.Kernel },
		Undo:    Undo{After: "sysctl --system >/dev/null 2>&1"},
		render:  func(*Target, Family) ([]File, error) { return KernelFiles() },
	}
}

// Sysctl is one key = value line of a sysctl.d file.
type Sysctl struct {
	Key, Value string
	Optional   bool // "-key": a missing key is not an error
}

// Namespaced reports whether the key belongs to the network (or IPC)
// namespace, so a container host sets its own. kernel.* and fs.* are the
// whole machine's.
func (s Sysctl) Namespaced() bool {
	return strings.HasPrefix(s.Key, "net.") || strings.HasPrefix(s.Key, "fs.mqueue.") ||
		strings.HasPrefix(s.Key, "kernel.shm") || strings.HasPrefix(s.Key, "kernel.msg") || s.Key == "kernel.sem"
}

// ParseSysctl reads a sysctl.d file.
func ParseSysctl(b []byte) []Sysctl {
	var out []Sysctl
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		s := Sysctl{Key: strings.TrimSpace(k), Value: strings.TrimSpace(v)}
		if strings.HasPrefix(s.Key, "-") {
			s.Key, s.Optional = strings.TrimPrefix(s.Key, "-"), true
		}
		out = append(out, s)
	}
	return out
}

// applySysctl sets each key now (the file covers the next boot). In a
// container only namespaced keys are set: the others are the machine's
// kernel, shared with every other container, and not this host's to change.
func applySysctl(ctx context.Context, t *Target, content []byte) error {
	var script strings.Builder
	var skipped []string
	for _, s := range ParseSysctl(content) {
		if t.Facts.Container() && !s.Namespaced() {
			skipped = append(skipped, s.Key)
			continue
		}
		proc := "/proc/sys/" + strings.ReplaceAll(s.Key, ".", "/")
		set := fmt.Sprintf("sysctl -q -w %s >/dev/null 2>&1 || printf 'fail\\t%%s\\n' %s\n", comm.Quote(s.Key+"="+s.Value), comm.Quote(s.Key))
		if s.Optional {
			set = fmt.Sprintf("if [ -e %s ]; then %s; else printf 'missing\\t%%s\\n' %s; fi\n", comm.Quote(proc), strings.TrimSuffix(set, "\n"), comm.Quote(s.Key))
		}
		script.WriteString(set)
	}
	if len(skipped) > 0 {
		t.Log.Info("kernel-wide sysctls not set in a container (written for when this runs on its own kernel)", "keys", skipped)
	}
	out, err := t.sudoSh(ctx, script.String())
	if err != nil {
		return fmt.Errorf("apply sysctls: %w", err)
	}
	var failed, missing []string
	for _, l := range strings.Split(string(out), "\n") {
		kind, key, _ := strings.Cut(l, "\t")
		switch kind {
		case "fail":
			failed = append(failed, key)
		case "missing":
			missing = append(missing, key)
		}
	}
	if len(missing) > 0 {
		t.Log.Info("optional sysctls not present in this kernel (yet)", "keys", missing)
	}
	if len(failed) > 0 {
		return fmt.Errorf("could not set sysctls: %s", strings.Join(failed, ", "))
	}
	return nil
}
