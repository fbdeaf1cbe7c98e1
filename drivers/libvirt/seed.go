package libvirt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/provision/provision/drivers"
)

// isoTool is the program that writes the NoCloud seed (Debian's
// genisoimage; cloud-localds and mkisofs call the same).
const isoTool = "genisoimage"

// seedISO renders the machine's NoCloud seed: an ISO 9660 image labelled
// "cidata" with meta-data (instance ID and hostname) and the cloud-init
// user-data provision shares with the cloud drivers (admin user and key,
// the pinned host key). The user-data holds the private host key: it is
// written only to a private temporary directory that is removed before
// returning, and never appears in an error.
func seedISO(ctx context.Context, want drivers.MachineSpec, instanceID string) ([]byte, error) {
	userData, err := drivers.UserData(want)
	if err != nil {
		return nil, err
	}
	tool, err := exec.LookPath(isoTool)
	if err != nil {
		return nil, fmt.Errorf("the NoCloud seed needs %s on this machine (apt-get install genisoimage): %w", isoTool, err)
	}
	dir, err := os.MkdirTemp("", "provision-seed-")
	if err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	defer os.RemoveAll(dir)
	metaData := fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", instanceID, want.Name)
	for name, body := range map[string][]byte{"user-data": userData, "meta-data": []byte(metaData)} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o600); err != nil {
			return nil, fmt.Errorf("seed: %w", err)
		}
	}
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "-quiet", "-output", "-", "-volid", "cidata", "-joliet", "-rock", "user-data", "meta-data")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", isoTool, err, strings.TrimSpace(stderr.String()))
	}
	if out.Len() == 0 {
		return nil, errors.New(isoTool + " wrote an empty image")
	}
	return out.Bytes(), nil
}
