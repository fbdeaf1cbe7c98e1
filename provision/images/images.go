// Package images loads image archives (`docker save` tarballs) onto hosts
// through their engine API, for hosts that reach no registry: once per
// image ID, skipped where the engine already has the image under its tags.
package images

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strings"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
)

// Archive is one image archive and the images it holds.
type Archive struct {
	Path   string
	Images []Image
}

// Image is one image in an archive: its ID (the config's digest) and the
// tags `docker load` gives it.
type Image struct {
	ID   string   // "sha256:<hex>"
	Tags []string // "app:1.2"; none for an archive saved by ID
}

var hexRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

// maxManifest bounds the manifest.json read from an archive.
const maxManifest = 4 << 20

// Read reads an archive's manifest.json (the `docker save` format; OCI
// archives saved by newer engines carry one too) without loading its
// layers: the tar headers are skipped over.
func Read(file string) (Archive, error) {
	f, err := os.Open(file)
	if err != nil {
		return Archive{}, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return Archive{}, fmt.Errorf("%s: no manifest.json: not an image archive made by `docker save`", file)
		}
		if err != nil {
			return Archive{}, fmt.Errorf("%s: not a tar archive: %w", file, err)
		}
		if path.Clean(h.Name) != "manifest.json" {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(tr, maxManifest+1))
		if err != nil {
			return Archive{}, fmt.Errorf("%s: read manifest.json: %w", file, err)
		}
		if len(b) > maxManifest {
			return Archive{}, fmt.Errorf("%s: manifest.json is larger than %d bytes", file, maxManifest)
		}
		return parseManifest(file, b)
	}
}

func parseManifest(file string, b []byte) (Archive, error) {
	var entries []struct {
		Config   string
		RepoTags []string
	}
	if err := json.Unmarshal(b, &entries); err != nil {
		return Archive{}, fmt.Errorf("%s: manifest.json: %w", file, err)
	}
	if len(entries) == 0 {
		return Archive{}, fmt.Errorf("%s: manifest.json lists no image", file)
	}
	a := Archive{Path: file}
	for _, e := range entries {
		// "<hex>.json" (docker save before 25) or "blobs/sha256/<hex>" (OCI layout).
		hex := strings.TrimSuffix(path.Base(e.Config), ".json")
		if !hexRe.MatchString(hex) {
			return Archive{}, fmt.Errorf("%s: manifest.json: config %q is not named by its sha256 digest", file, e.Config)
		}
		a.Images = append(a.Images, Image{ID: "sha256:" + hex, Tags: e.RepoTags})
	}
	return a, nil
}

// API is the part of the engine API loading images uses; *client.Client
// implements it.
type API interface {
	ImageInspect(ctx context.Context, imageID string, opts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImageLoad(ctx context.Context, input io.Reader, opts ...client.ImageLoadOption) (image.LoadResponse, error)
}

var _ API = (*client.Client)(nil)

// Present reports whether the engine has every image of the archive under
// its ID and each of its tags.
func Present(ctx context.Context, api API, a Archive) (bool, error) {
	for _, im := range a.Images {
		got, err := api.ImageInspect(ctx, im.ID)
		if errdefs.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("inspect image %s: %w", short(im.ID), err)
		}
		for _, t := range im.Tags {
			if !hasTag(got.RepoTags, t) {
				return false, nil
			}
		}
	}
	return true, nil
}

// hasTag matches a tag as saved ("app:1") against the engine's
// normalised ones ("docker.io/library/app:1" on some engines, "app:1" on
// others).
func hasTag(have []string, t string) bool {
	for _, h := range have {
		if h == t || strings.TrimPrefix(strings.TrimPrefix(h, "docker.io/"), "library/") == strings.TrimPrefix(strings.TrimPrefix(t, "docker.io/"), "library/") {
			return true
		}
	}
	return false
}

// Ensure loads the archive unless the engine already has it; it reports
// whether it loaded. The archive streams from the operator's file through
// the engine API (TLS, through the bastion's tunnel when there is one): no
// copy lands on the host's disk besides the engine's own.
func Ensure(ctx context.Context, api API, a Archive) (bool, error) {
	ok, err := Present(ctx, api, a)
	if err != nil || ok {
		return false, err
	}
	f, err := os.Open(a.Path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	resp, err := api.ImageLoad(ctx, f, client.ImageLoadWithQuiet(true))
	if err != nil {
		return false, fmt.Errorf("load %s: %w", a.Path, err)
	}
	defer resp.Body.Close()
	if err := readLoad(resp.Body); err != nil {
		return false, fmt.Errorf("load %s: %w", a.Path, err)
	}
	ok, err = Present(ctx, api, a)
	if err != nil {
		return true, err
	}
	if !ok {
		return true, fmt.Errorf("load %s: the engine does not list %s afterwards", a.Path, short(a.Images[0].ID))
	}
	return true, nil
}

// readLoad reads the engine's JSON message stream and returns the error it
// reports, if any.
func readLoad(r io.Reader) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("read the engine's answer: %w", err)
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return errors.New(m.ErrorDetail.Message)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
	}
}

func short(id string) string {
	if len(id) > 19 {
		return id[:19]
	}
	return id
}
