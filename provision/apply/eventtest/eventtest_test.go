package eventtest

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/provision/apply"
)

func render(evs ...apply.Event) []byte {
	var b bytes.Buffer
	r := &apply.JSON{W: &b}
	for _, e := range evs {
		if e.Time.IsZero() {
			e.Time = time.Now()
		}
		r.Event(e)
	}
	return b.Bytes()
}

func TestCheck(t *testing.T) {
	plan := apply.Event{Kind: apply.PlanEvent, Plan: map[string]any{"cluster": "c"}}
	sum := apply.Event{Kind: apply.SummaryEnd, Summary: &apply.Summary{Command: "apply"}}
	failed := apply.Event{Kind: apply.SummaryEnd, Summary: &apply.Summary{Command: "apply", Error: "locked"}}
	ps := apply.Event{Kind: apply.PhaseStart, Phase: "host", Hosts: 1}
	pe := apply.Event{Kind: apply.PhaseEnd, Phase: "host", Took: time.Second}
	hs := apply.Event{Kind: apply.HostStart, Host: "n1", Step: "host"}
	hd := apply.Event{Kind: apply.HostDone, Host: "n1", Step: "host"}
	ss := apply.Event{Kind: apply.StepStart, Host: "n1", Step: "engine.install"}
	sc := apply.Event{Kind: apply.StepChange, Host: "n1", Step: "engine.install"}
	sf := apply.Event{Kind: apply.StepFail, Host: "n1", Step: "engine.install", Err: "exit 1"}
	good := [][]apply.Event{
		{plan, sum},
		{plan, ps, hs, ss, sc, hd, pe, sum},
		{plan, ps, hs, ss, sf, pe, {Kind: apply.Warning, Msg: "w"}, sum},
		// stopped before planning: warnings and a summary with the error
		{failed},
		{{Kind: apply.Warning, Msg: "stale lock"}, failed},
	}
	for i, evs := range good {
		if _, _, err := Check(render(evs...), "apply"); err != nil {
			t.Errorf("good %d: %v", i, err)
		}
	}
	bad := map[string][]apply.Event{
		"no plan":           {ps, pe, sum},
		"only a summary":    {sum},
		"phase, no plan":    {ps, pe, failed},
		"nothing":           {},
		"no summary":        {plan, ps, pe},
		"step never ends":   {plan, ps, hs, ss, hd, pe, sum},
		"host never done":   {plan, ps, hs, pe, sum},
		"nested phases":     {plan, ps, ps, pe, pe, sum},
		"step outside":      {plan, ss, sc, sum},
		"two plans":         {plan, plan, sum},
		"wrong command":     {plan, {Kind: apply.SummaryEnd, Summary: &apply.Summary{Command: "destroy"}}},
		"unknown kind":      {plan, {Kind: "bogus"}, sum},
		"fail without text": {plan, ps, hs, {Kind: apply.StepFail, Host: "n1", Step: "x"}, pe, sum},
	}
	for name, evs := range bad {
		if _, _, err := Check(render(evs...), "apply"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Not NDJSON at all.
	for _, out := range []string{"Destroyed cluster \"c\".\n", "{\"kind\":\"plan\"} {\"kind\":\"summary\"}\n", "\n"} {
		if _, _, err := Check([]byte(out), "apply"); err == nil {
			t.Errorf("accepted %q", out)
		}
	}
	// An interrupted run (the summary has an error) may leave steps open.
	sumErr := apply.Event{Kind: apply.SummaryEnd, Summary: &apply.Summary{Command: "apply", Error: "apply stopped"}}
	if _, _, err := Check(render(plan, ps, hs, ss, sumErr), "apply"); err != nil && !strings.Contains(err.Error(), "never") {
		t.Errorf("interrupted: %v", err)
	}
}
