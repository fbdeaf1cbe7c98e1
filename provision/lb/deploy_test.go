package lb

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"io"
	"os"
	"strings"
	"testing"
)

// TestBuildImage packs this test binary (dynamically linked when cgo is
// on, static otherwise) and checks the root filesystem: the binary as
// /provision, and for a dynamic binary its interpreter and every library it
// names, so that it starts in an image with nothing else.
func TestBuildImage(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	img, err := BuildImage(exe)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(img.Tag, ImageRepo+":") || img.Arch == "" {
		t.Errorf("image %s arch %s", img.Tag, img.Arch)
	}
	gz, err := gzip.NewReader(bytes.NewReader(img.RootTar))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	have := map[string]int64{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		have[h.Name] = h.Size
	}
	fi, _ := os.Stat(exe)
	if have["provision"] != fi.Size() {
		t.Errorf("provision in the image: %d bytes, binary %d", have["provision"], fi.Size())
	}
	if _, ok := have["tmp/"]; !ok {
		t.Error("no /tmp")
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dynamic := false
	for _, p := range f.Progs {
		dynamic = dynamic || p.Type == elf.PT_INTERP
	}
	libs, _ := f.ImportedLibraries()
	files, err := runtimeFiles(exe)
	if err != nil {
		t.Fatal(err)
	}
	if dynamic != (len(files) > 0) {
		t.Fatalf("dynamic %v, runtime files %v", dynamic, files)
	}
	for _, l := range files {
		if _, ok := have[strings.TrimPrefix(l, "/")]; !ok {
			t.Errorf("%s is not in the image", l)
		}
	}
	for _, l := range libs {
		found := false
		for _, p := range files {
			found = found || strings.HasSuffix(p, "/"+l)
		}
		if !found {
			t.Errorf("library %s not packed (%v)", l, files)
		}
	}
	t.Logf("dynamic %v: %d runtime files, image %d bytes", dynamic, len(files), len(img.RootTar))

	if _, err := BuildImage("/etc/hostname"); err == nil {
		t.Error("a text file was packed as the binary")
	}
}
