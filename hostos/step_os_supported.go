package hostos

import (
	"context"
	"fmt"
)

// os.supported: the host runs a distro of the Family table and dpkg says
// its architecture.
func stepOSSupported() *Step {
	return &Step{
		ID: "os.supported",
		check: func(ctx context.Context, t *Target) (bool, error) {
			if _, err := t.family(); err != nil {
				return false, err
			}
			if t.Facts.Arch == "" {
				return false, fmt.Errorf("no dpkg architecture reported")
			}
			return true, nil
		},
		apply: func(ctx context.Context, t *Target) error {
			_, err := t.family()
			return err
		},
	}
}
