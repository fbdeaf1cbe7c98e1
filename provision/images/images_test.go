package images

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
)

const hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// writeTar writes an archive with the given files (a big layer first, so
// Read has to skip over it).
func writeTar(t *testing.T, files map[string]string, order ...string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range order {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), Typeflag: tar.TypeReg})
		tw.Write([]byte(files[n]))
	}
	tw.Close()
	p := filepath.Join(t.TempDir(), "app.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRead(t *testing.T) {
	p := writeTar(t, map[string]string{
		"layer/layer.tar": strings.Repeat("x", 1<<20),
		"manifest.json":   `[{"Config":"` + hexA + `.json","RepoTags":["app:1","app:latest"],"Layers":["layer/layer.tar"]}]`,
	}, "layer/layer.tar", "manifest.json")
	a, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Images) != 1 || a.Images[0].ID != "sha256:"+hexA || strings.Join(a.Images[0].Tags, ",") != "app:1,app:latest" {
		t.Errorf("archive %+v", a)
	}
	// The OCI layout's config path.
	p = writeTar(t, map[string]string{"manifest.json": `[{"Config":"blobs/sha256/` + hexA + `","RepoTags":null}]`}, "manifest.json")
	if a, err := Read(p); err != nil || a.Images[0].ID != "sha256:"+hexA || len(a.Images[0].Tags) != 0 {
		t.Errorf("oci: %+v %v", a, err)
	}
	for name, c := range map[string]struct{ files map[string]string }{
		"no manifest": {map[string]string{"x": "y"}},
		"bad config":  {map[string]string{"manifest.json": `[{"Config":"../etc/passwd"}]`}},
		"empty":       {map[string]string{"manifest.json": `[]`}},
		"not json":    {map[string]string{"manifest.json": `{`}},
	} {
		var order []string
		for k := range c.files {
			order = append(order, k)
		}
		if _, err := Read(writeTar(t, c.files, order...)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	notTar := filepath.Join(t.TempDir(), "x.tar")
	os.WriteFile(notTar, []byte("hello, this is not a tar file at all, it is far too short"), 0o644)
	if _, err := Read(notTar); err == nil {
		t.Error("not a tar: no error")
	}
}

type fakeEngine struct {
	images map[string][]string // id -> tags
	loads  int
	answer string
}

func (f *fakeEngine) ImageInspect(_ context.Context, id string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	tags, ok := f.images[id]
	if !ok {
		return image.InspectResponse{}, errdefs.NotFound(errors.New("no such image"))
	}
	return image.InspectResponse{ID: id, RepoTags: tags}, nil
}

func (f *fakeEngine) ImageLoad(_ context.Context, in io.Reader, _ ...client.ImageLoadOption) (image.LoadResponse, error) {
	f.loads++
	b, _ := io.ReadAll(in)
	if len(b) == 0 {
		return image.LoadResponse{}, errors.New("empty body")
	}
	if f.answer == "" {
		f.images["sha256:"+hexA] = []string{"docker.io/library/app:1"}
	}
	return image.LoadResponse{Body: io.NopCloser(strings.NewReader(f.answer + `{"stream":"Loaded image: app:1\n"}`))}, nil
}

func TestEnsure(t *testing.T) {
	p := writeTar(t, map[string]string{"manifest.json": `[{"Config":"` + hexA + `.json","RepoTags":["app:1"]}]`}, "manifest.json")
	a, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e := &fakeEngine{images: map[string][]string{}}
	if loaded, err := Ensure(ctx, e, a); err != nil || !loaded || e.loads != 1 {
		t.Fatalf("first: loaded %v, %v, %d loads", loaded, err, e.loads)
	}
	if loaded, err := Ensure(ctx, e, a); err != nil || loaded || e.loads != 1 {
		t.Fatalf("again: loaded %v, %v, %d loads (want no second load)", loaded, err, e.loads)
	}
	// Present by ID but the tag moved elsewhere: loaded again.
	e.images["sha256:"+hexA] = nil
	if loaded, err := Ensure(ctx, e, a); err != nil || !loaded || e.loads != 2 {
		t.Fatalf("untagged: loaded %v, %v, %d loads", loaded, err, e.loads)
	}
	// The engine's error in the stream is the error.
	e = &fakeEngine{images: map[string][]string{}, answer: `{"errorDetail":{"message":"no space left on device"},"error":"no space left on device"}`}
	if _, err := Ensure(ctx, e, a); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("engine error: %v", err)
	}
}
