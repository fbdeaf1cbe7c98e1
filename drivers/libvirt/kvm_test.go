//go:build cgo && libvirt_dlopen

package libvirt

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

// TestKVMVerdict: KVM is refused where the hypervisor offers KVM domains
// but the CPU shows no vmx or svm (this machine's trap: /dev/kvm exists and
// libvirt lists kvm, and a guest never boots), and where no KVM domain is
// offered; it is accepted when the capabilities or the local kernel show
// the extension.
func TestKVMVerdict(t *testing.T) {
	caps := func(kvm bool, flags ...string) libvirtxml.Caps {
		c := libvirtxml.Caps{Host: libvirtxml.CapsHost{CPU: &libvirtxml.CapsHostCPU{Model: "EPYC"}}}
		for _, f := range flags {
			c.Host.CPU.FeatureFlags = append(c.Host.CPU.FeatureFlags, libvirtxml.CapsHostCPUFeatureFlag{Name: f})
		}
		doms := []libvirtxml.CapsGuestDomain{{Type: "qemu"}}
		if kvm {
			doms = append(doms, libvirtxml.CapsGuestDomain{Type: "kvm"})
		}
		c.Guests = []libvirtxml.CapsGuest{{OSType: "hvm", Arch: libvirtxml.CapsGuestArch{Name: "x86_64", Domains: doms}}}
		return c
	}
	const noVMX = "processor\t: 0\nflags\t\t: fpu vme sse2 avx2 hypervisor\n"
	for _, c := range []struct {
		name    string
		caps    libvirtxml.Caps
		cpuinfo string
		want    string // "" accepted, else part of the error
	}{
		{"kvm listed, no extension anywhere", caps(true, "sse2", "avx2"), noVMX, "no virtualization extension (vmx or svm)"},
		{"no kvm domains", caps(false, "vmx"), "", "offers no KVM domains"},
		{"vmx in the capabilities", caps(true, "vmx"), "", ""},
		{"svm in the local kernel", caps(true), "flags\t\t: fpu svm sse2\n", ""},
	} {
		err := kvmVerdict(c.caps, c.cpuinfo, "qemu:///system")
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `domain_type = "qemu"`)):
			t.Errorf("%s: %v, want an error with %q and the way out", c.name, err, c.want)
		}
	}
}
