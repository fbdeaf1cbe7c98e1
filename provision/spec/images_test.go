package spec

import (
	"archive/tar"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testCA(t *testing.T) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "registry ca"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestImagesAndRegistries(t *testing.T) {
	dir := t.TempDir()
	f, _ := os.Create(filepath.Join(dir, "app.tar"))
	tw := tar.NewWriter(f)
	m := `[{"Config":"` + strings.Repeat("b", 64) + `.json","RepoTags":["app:1"]}]`
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(m))})
	tw.Write([]byte(m))
	tw.Close()
	f.Close()
	os.WriteFile(filepath.Join(dir, "ca.crt"), testCA(t), 0o644)
	os.WriteFile(filepath.Join(dir, "key.pem"), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
	file := filepath.Join(dir, "c.hcl")
	good := `name = "i"
images = ["app.tar"]
managers { count = 1 }
engine {
  registry_mirrors = ["https://mirror.internal:5000"]
  registry "registry.internal:5000" {
    ca_file = "ca.crt"
  }
}
`
	c, diags := LoadBytes(file, []byte(good), Vars{})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if len(c.Images) != 1 || c.Images[0] != filepath.Join(dir, "app.tar") {
		t.Errorf("images %v", c.Images)
	}
	if len(c.Engine.RegistryMirrors) != 1 || len(c.Engine.Registries) != 1 || c.Engine.Registries[0].Host != "registry.internal:5000" || !strings.Contains(c.Engine.Registries[0].CA, "BEGIN CERTIFICATE") {
		t.Errorf("registries %+v %v", c.Engine.Registries, c.Engine.RegistryMirrors)
	}
	for _, bad := range []struct{ src, want string }{
		{`images = ["missing.tar"]`, "c.hcl:2,10-25: Invalid image archive"},
		{`images = ["ca.crt"]`, "not a tar archive"},
		{`images = ["app.tar", "./app.tar"]`, "Duplicate image archive"},
		{"engine {\n  registry_mirrors = [\"mirror.internal\"]\n}", "c.hcl:4,22-41: Invalid registry mirror"},
		{"engine {\n  registry \"bad/host\" {\n    ca_file = \"ca.crt\"\n  }\n}", "c.hcl:4,12-22: Invalid registry host"},
		{"engine {\n  registry \"r:5000\" {\n    ca_file = \"key.pem\"\n  }\n}", "c.hcl:5,15-24: Invalid CA file"},
		{"engine {\n  registry \"r:5000\" {\n    ca_file = \"nope.crt\"\n  }\n}", "Unreadable CA file"},
		{"engine {\n  registry \"r:5000\" {\n  }\n}", "Missing ca_file"},
	} {
		src := "name = \"i\"\n" + bad.src + "\nmanagers { count = 1 }\n"
		if !strings.HasPrefix(bad.src, "images") {
			src = "name = \"i\"\nmanagers { count = 1 }\n" + bad.src + "\n"
		}
		_, diags := LoadBytes(file, []byte(src), Vars{})
		if !diags.HasErrors() || !strings.Contains(diags.Error(), strings.TrimPrefix(bad.want, file)) {
			t.Errorf("%s: want %q in %v", bad.src, bad.want, diags)
		}
	}
}
