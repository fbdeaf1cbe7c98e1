package apply

import (
	"strings"
	"testing"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/hostos"
)

// espDropper is a driver whose network drops IPsec ESP between machines
// (a DigitalOcean cloud firewall).
type espDropper struct {
	*testDriver
	why string
}

func (d espDropper) NoESP() string { return d.why }

// TestOverlayEncryptionFollowsDataPath: the overlay network is encrypted
// only where every member's kernel has the ESP data path and no member's
// driver network drops ESP; otherwise apply says which, and why.
func TestOverlayEncryptionFollowsDataPath(t *testing.T) {
	for _, c := range []struct {
		name    string
		driver  drivers.Driver
		kernel  string // a worker's ESP fact
		want    bool
		noteHas string
	}{
		{"carried", &testDriver{}, "yes", true, ""},
		{"driver answers empty", espDropper{&testDriver{}, ""}, "yes", true, ""},
		{"firewall drops ESP", espDropper{&testDriver{}, "cloud firewalls carry only TCP, UDP and ICMP"}, "yes", false, `driver "local" drops IPsec ESP`},
		{"kernel lacks ESP", &testDriver{}, "no", false, "the kernel of t-worker-1 has no IPsec ESP"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := fakeRun(t, newFakeSwarm(), 1, 1)
			r.Spec.Hardening.OverlayEncryption = true
			r.Drivers = map[string]drivers.Driver{"local": c.driver}
			for _, h := range r.hosts {
				esp := "yes"
				if h.rec.Name == "t-worker-1" {
					esp = c.kernel
				}
				h.target = &hostos.Target{Facts: &hostos.Facts{ESP: esp}}
			}
			var notes []string
			r.rep = reporterFunc(func(ev Event) {
				if ev.Kind == Note {
					notes = append(notes, ev.Msg)
				}
			})
			if got := r.overlayEncryption(); got != c.want {
				t.Errorf("encrypted %v, want %v (notes %q)", got, c.want, notes)
			}
			switch {
			case c.noteHas == "" && len(notes) > 0:
				t.Errorf("notes %q, want none", notes)
			case c.noteHas != "" && (len(notes) != 1 || !strings.Contains(notes[0], c.noteHas)):
				t.Errorf("notes %q, want one with %q", notes, c.noteHas)
			}
			r.Spec.Hardening.OverlayEncryption = false
			if r.overlayEncryption() {
				t.Error("encrypted although the spec does not ask for it")
			}
		})
	}
}
