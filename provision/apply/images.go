package apply

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/provision/provision/provision/images"
)

// imagesPhase loads the spec's image archives (`images = [...]`) onto every
// node that lacks them, through its engine API over mutual TLS (through the
// bastion's tunnel where SSH goes through one): hosts without a registry get
// their images from the operator's machine. One inspect per image per host
// when nothing is missing.
type imagesPhase struct{}

func (imagesPhase) Name() string { return "images" }

func (imagesPhase) Run(ctx context.Context, r *run) error {
	if len(r.Spec.Images) == 0 {
		return nil
	}
	var archives []images.Archive
	for _, p := range r.Spec.Images {
		a, err := images.Read(p)
		if err != nil {
			return fmt.Errorf("image archive: %w", err) // it was readable at load: changed since
		}
		archives = append(archives, a)
	}
	hosts := r.live()
	if err := r.engines(ctx, hosts); err != nil {
		return err
	}
	return r.each(ctx, hosts, "engine.images", func(ctx context.Context, h *host) error {
		r.mu.Lock()
		api := h.api
		r.mu.Unlock()
		ia, ok := api.(images.API)
		if !ok {
			return fmt.Errorf("its engine API cannot load images")
		}
		for _, a := range archives {
			t0 := time.Now()
			loaded, err := images.Ensure(ctx, ia, a)
			if err != nil {
				return err
			}
			if loaded {
				h.changed = true
				r.rep.Event(Event{Time: time.Now(), Kind: StepChange, Host: h.rec.Name, Step: "engine.images", Msg: "loaded " + filepath.Base(a.Path), Took: time.Since(t0)})
			}
		}
		return nil
	})
}
