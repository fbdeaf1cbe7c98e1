package swarm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	dswarm "github.com/docker/docker/api/types/swarm"
)

// Turn is one member's part in a rolling change that restarts its engine
// (an engine upgrade, new certificates or daemon settings).
type Turn struct {
	Host    *Host
	NodeID  string
	Manager bool
	// Drain: the node is drained before the change (its tasks Running
	// elsewhere) and made active again after it, when it was active.
	Drain bool
	// DrainedByUs: the node is drained because provision drained it in an
	// earlier run that failed or was cut short (its state record says so),
	// not because its operator did: it is made active again after the
	// change as if it had been active.
	DrainedByUs bool
}

// ErrLeftDrained marks a turn that failed after its node was drained: the
// node stays drained (its tasks run elsewhere) until an apply finishes it.
var ErrLeftDrained = errors.New("the node is left drained, its tasks running elsewhere")

// Cycle takes one member through a change that restarts its engine: it is
// drained first when the turn says so, change runs (restarted: whether the
// engine did restart), the engine must be back (an active node, a manager
// with control; Ready, and Reachable for a manager), check sees what the
// engine now says of itself (its version), and a drained node is made
// active again and waits for the swarm's tasks to run. A failure after the
// drain leaves the node drained (ErrLeftDrained): the next node must not
// go while this one is in doubt.
func (m *Membership) Cycle(ctx context.Context, t Turn, change func(ctx context.Context) (restarted bool, err error), check func(Local) error) error {
	name := t.Host.Name
	if t.Manager {
		// Calls go through another manager while this one's engine restarts.
		if dropped := m.dropManager(t.NodeID, t.Host); m.Via() == nil {
			m.restore(dropped)
		} else {
			defer m.restore(dropped)
		}
	}
	via := m.Via()
	if via == nil {
		return fmt.Errorf("%s: no manager to ask", name)
	}
	reactivate := false
	if t.Drain {
		n, _, err := via.API.NodeInspectWithRaw(ctx, t.NodeID)
		switch {
		case err != nil && Untrusted(err):
			// The engines still present certificates of a CA the operator
			// no longer holds (the CA was replaced, not rotated): nothing
			// can be asked before they restart with the new certificates,
			// so this one restarts without a drain, as a plain restart does.
			if m.Notify != nil {
				m.Notify(name, "its engine presents a certificate from a CA this state no longer holds: restarting it without a drain (`provision rotate ca` replaces a CA without this)")
			}
			t.Drain = false
		case err != nil:
			return fmt.Errorf("%s: node inspect before the drain: %w", name, err)
		default:
			reactivate = n.Spec.Availability == dswarm.NodeAvailabilityActive ||
				(t.DrainedByUs && n.Spec.Availability == dswarm.NodeAvailabilityDrain)
			if err := m.drain(ctx, name, t.NodeID); err != nil {
				return fmt.Errorf("drain: %w", err)
			}
		}
	}
	left := func(err error) error {
		if t.Drain {
			return fmt.Errorf("%w (%w)", err, ErrLeftDrained)
		}
		return err
	}
	restarted, err := change(ctx)
	if err != nil {
		return left(err)
	}
	if restarted || t.Drain {
		if err := m.WaitMember(ctx, t.Host, t.NodeID, t.Manager); err != nil {
			return left(fmt.Errorf("back in the swarm after the engine restart: %w", err))
		}
	}
	if check != nil {
		l, err := t.Host.Inspect(ctx)
		if err != nil {
			return left(fmt.Errorf("%s: engine after the change: %w", name, err))
		}
		if err := check(l); err != nil {
			return left(err)
		}
	}
	if !reactivate {
		return nil
	}
	m.note(name, "active again")
	if _, err := m.Via().update(ctx, t.NodeID, func(s *dswarm.NodeSpec) bool {
		if s.Availability == dswarm.NodeAvailabilityActive {
			return false
		}
		s.Availability = dswarm.NodeAvailabilityActive
		return true
	}); err != nil {
		return left(err)
	}
	return nil
}

// Untrusted reports whether err is the engine's TLS certificate failing
// verification against the operator's CA (the engine was issued by a CA the
// state no longer holds).
func Untrusted(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	if errors.As(err, &cv) || errors.As(err, &ua) {
		return true
	}
	// The SDK does not always keep the chain: its message does.
	return strings.Contains(err.Error(), "x509: certificate signed by unknown authority")
}
