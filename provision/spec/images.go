package spec

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/hashicorp/hcl/v2"

	"github.com/provision/provision/provision/images"
)

var registrySchema = attrSchema("ca_file")

// registryHostRe is a registry's host[:port] as certs.d names it.
var registryHostRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:[0-9]{1,5})?$`)

// decodeImages reads `images = [...]`: every archive must exist and be an
// image archive (its manifest is read, not its layers).
func decodeImages(dc *dec, c *Cluster, attrs hcl.Attributes, firstFile string) {
	var list []string
	r, ok := dc.strList(attrs, "images", "images", &list)
	if !ok {
		return
	}
	base := filepath.Dir(firstFile)
	seen := map[string]bool{}
	for _, p := range list {
		abs := p
		if !filepath.IsAbs(abs) {
			abs = filepath.Join(base, p)
		}
		if abs, err := filepath.Abs(abs); err == nil {
			if seen[abs] {
				dc.errf(r, "Duplicate image archive", "images lists %q twice.", p)
				continue
			}
			seen[abs] = true
		}
		if _, err := images.Read(abs); err != nil {
			dc.errf(r, "Invalid image archive", "images: %q (relative to the cluster file's directory): %s. Make one with `docker save -o app.tar app:1`.", p, err)
			continue
		}
		c.Images = append(c.Images, abs)
	}
}

// decodeRegistries reads engine.registry_mirrors and the engine's registry
// blocks.
func decodeRegistries(dc *dec, c *Cluster, content *hcl.BodyContent) {
	if r, ok := dc.strList(content.Attributes, "registry_mirrors", "engine.registry_mirrors", &c.Engine.RegistryMirrors); ok {
		for _, m := range c.Engine.RegistryMirrors {
			u, err := url.Parse(m)
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
				dc.errf(r, "Invalid registry mirror", "engine.registry_mirrors: %q must be a URL like \"https://mirror.internal:5000\" (scheme, host and port only).", m)
			}
		}
	}
	seen := map[string]hcl.Range{}
	for _, b := range content.Blocks {
		host := b.Labels[0]
		lr := b.LabelRanges[0]
		if !registryHostRe.MatchString(host) || !validPort(host) {
			dc.errf(lr, "Invalid registry host", "registry %q must be a host name or address with an optional port, as images name it (\"registry.internal:5000\").", host)
			continue
		}
		if prev, ok := seen[host]; ok {
			dc.errf(lr, "Duplicate registry block", "registry %q is already configured at %s.", host, prev)
			continue
		}
		seen[host] = b.DefRange
		bc, d := b.Body.Content(registrySchema)
		dc.diags = append(dc.diags, d...)
		var file string
		r, ok := dc.str(bc.Attributes, "ca_file", "engine.registry."+host+".ca_file", &file)
		if !ok {
			dc.errf(b.DefRange, "Missing ca_file", "registry %q needs ca_file: the PEM certificate of the CA that signed the registry's certificate (a registry with a publicly trusted certificate needs no block).", host)
			continue
		}
		if !filepath.IsAbs(file) {
			file = filepath.Join(filepath.Dir(b.DefRange.Filename), file)
		}
		pemBytes, err := os.ReadFile(file)
		if err == nil && len(pemBytes) > 1<<20 {
			err = caTooLarge{}
		}
		if err != nil {
			dc.errf(r, "Unreadable CA file", "registry %q: ca_file: %s.", host, err)
			continue
		}
		if msg := checkCAPEM(pemBytes); msg != "" {
			dc.errf(r, "Invalid CA file", "registry %q: ca_file %s.", host, msg)
			continue
		}
		c.Engine.Registries = append(c.Engine.Registries, Registry{Host: host, CA: string(pemBytes)})
	}
}

type caTooLarge struct{}

func (caTooLarge) Error() string { return "larger than 1 MiB" }

func validPort(host string) bool {
	_, port, err := net.SplitHostPort(host)
	if err != nil {
		return true // no port
	}
	n, err := strconv.Atoi(port)
	return err == nil && n > 0 && n < 65536
}

// checkCAPEM says what is wrong with a CA bundle: it must hold PEM
// certificates only, each parsing as X.509.
func checkCAPEM(b []byte) string {
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return "holds a " + blk.Type + " block: give the CA's certificate only, never a key"
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return "holds a certificate that does not parse: " + err.Error()
		}
		n++
	}
	if n == 0 {
		return "holds no PEM certificate"
	}
	return ""
}
