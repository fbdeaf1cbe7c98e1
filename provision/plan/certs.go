package plan

import (
	"fmt"
	"time"

	"github.com/provision/provision/provision/spec"
	"github.com/provision/provision/provision/state"
)

// CertExpiry is one node's engine TLS certificate as state records it.
type CertExpiry struct {
	Machine  string    `json:"machine"`
	NotAfter time.Time `json:"not_after"`
	// Renews: apply reissues it (inside the renewal window, or a `rotate
	// certs` or CA rotation is under way); the node's engine restarts,
	// drained first.
	Renews bool `json:"renews,omitempty"`
}

// certs lists each recorded machine's certificate expiry and turns a
// machine with nothing else to do into a reconfigure when its certificate
// is renewed; notes say when a rotation is under way.
func (p *Plan) certs(c *spec.Cluster, st *state.State, now time.Time) {
	window := time.Duration(c.TLS.RenewBeforeHours) * time.Hour
	pk := st.PKI
	for i := range p.Actions {
		a := &p.Actions[i]
		rec := a.Recorded
		if rec == nil || rec.CertNotAfter.IsZero() || a.Kind == Remove {
			continue
		}
		e := CertExpiry{Machine: a.Machine, NotAfter: rec.CertNotAfter}
		var why string
		switch {
		case pk.Rotation != "":
			why = "CA rotation (phase " + pk.Rotation + ")"
		case !pk.ReissueBefore.IsZero():
			why = "`provision rotate certs` under way"
		case rec.CertNotAfter.Sub(now) < window:
			why = fmt.Sprintf("TLS certificate expires %s, inside the renewal window (%s)", rec.CertNotAfter.UTC().Format("2006-01-02"), window)
		}
		if why != "" {
			e.Renews = true
			if a.Kind == None {
				a.Kind = Reconfigure
				a.Reasons = []string{why + ": reissued; the engine restarts, drained first, in rolling batches"}
			}
		}
		p.Certs = append(p.Certs, e)
	}
	if pk.Rotation != "" {
		p.Notes = append(p.Notes, fmt.Sprintf("a CA rotation is under way (phase %s of trust, reissue, drop): apply goes on with it; `provision rotate ca` finishes it", pk.Rotation))
	}
	if !pk.ClientNotAfter.IsZero() && pk.ClientNotAfter.Sub(now) < window {
		p.Notes = append(p.Notes, fmt.Sprintf("the operator's client certificate expires %s, inside the renewal window: apply reissues it", pk.ClientNotAfter.UTC().Format("2006-01-02")))
	}
}
