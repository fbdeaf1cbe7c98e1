package templates

import (
	"bytes"
	"errors"
	"fmt"
	"mime/multipart"
	"net/textproto"
	"regexp"
	"strings"
)

// CloudInit is what provision's cloud-config sets on a new machine: its
// hostname, the admin user with its key, and the SSH host key provision
// generated (so the first connection is already strictly checked). Extra is
// the spec's own user-data, appended as a second MIME part.
//
// Every cloud driver (and libvirt's NoCloud seed) renders it through
// UserData; the result holds a private host key and must go only to the
// platform's API, never to a log or an error.
type CloudInit struct {
	Hostname       string
	User           string
	AuthorizedKey  string
	HostKeyPrivate string
	HostKeyPublic  string
	Extra          string
}

var loginRe = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// UserData validates c and renders the machine's user-data.
func UserData(c CloudInit) ([]byte, error) {
	switch {
	case !loginRe.MatchString(c.User):
		return nil, fmt.Errorf("admin user %q is not a valid login name", c.User)
	case strings.TrimSpace(c.AuthorizedKey) == "" || strings.ContainsAny(strings.TrimSpace(c.AuthorizedKey), "\r\n"):
		return nil, errors.New("the SSH public key must be one authorized_keys line")
	case c.HostKeyPrivate == "" || c.HostKeyPublic == "":
		return nil, errors.New("no SSH host key: the engine must generate one before creating the machine")
	case !strings.HasPrefix(c.HostKeyPublic, "ssh-ed25519 "):
		return nil, errors.New("the SSH host key must be ed25519")
	}
	c.AuthorizedKey = strings.TrimSpace(c.AuthorizedKey)
	c.HostKeyPublic = strings.TrimSpace(c.HostKeyPublic)
	var buf bytes.Buffer
	if err := parsed.Lookup("cloud-init.yaml.tmpl").Execute(&buf, c); err != nil {
		// Template errors name fields, never values.
		return nil, fmt.Errorf("render cloud-init: %w", err)
	}
	if strings.TrimSpace(c.Extra) == "" {
		return buf.Bytes(), nil
	}
	return multipartUserData(buf.Bytes(), []byte(c.Extra))
}

// multipartUserData joins two user-data parts the way cloud-init reads them.
func multipartUserData(first, second []byte) ([]byte, error) {
	var out bytes.Buffer
	w := multipart.NewWriter(&out)
	fmt.Fprintf(&out, "Content-Type: multipart/mixed; boundary=%q\r\nMIME-Version: 1.0\r\n\r\n", w.Boundary())
	for i, part := range [][]byte{first, second} {
		ct := userDataType(part)
		h := textproto.MIMEHeader{}
		h.Set("Content-Type", ct+`; charset="utf-8"`)
		h.Set("MIME-Version", "1.0")
		h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=\"part-%d\"", i+1))
		if i == 1 && ct == "text/cloud-config" {
			// Merge the spec's cloud-config into provision's without
			// replacing what provision set (user, host key).
			h.Set("Merge-Type", "list(append)+dict(no_replace,recurse_list)+str()")
		}
		pw, err := w.CreatePart(h)
		if err != nil {
			return nil, err
		}
		if _, err := pw.Write(part); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// userDataType maps the usual first-line markers to cloud-init's MIME types.
func userDataType(b []byte) string {
	s := string(b)
	switch {
	case strings.HasPrefix(s, "## template: jinja"):
		return "text/jinja2"
	case strings.HasPrefix(s, "#cloud-config"):
		return "text/cloud-config"
	case strings.HasPrefix(s, "#!"):
		return "text/x-shellscript"
	case strings.HasPrefix(s, "#cloud-boothook"):
		return "text/cloud-boothook"
	case strings.HasPrefix(s, "#include"):
		return "text/x-include-url"
	}
	return "text/plain"
}

// BatchUserData renders one user-data for machines launched together in one
// EC2 RunInstances call (which takes one user-data for all of them): machine
// k of cs is the instance with launch index k, and cloud-init's Jinja
// templating picks its hostname and host key from EC2's ami-launch-index.
// The admin user, key and Extra must be the same for every machine. Each
// instance can read the others' install keys through the metadata service
// until the engine replaces every key on its first connection.
func BatchUserData(cs []CloudInit) ([]byte, error) {
	if len(cs) == 0 {
		return nil, errors.New("no machines")
	}
	type machine struct{ Index, Hostname, HostKeyPrivate, HostKeyPublic string }
	data := struct {
		User, AuthorizedKey string
		Machines            []machine
	}{User: cs[0].User, AuthorizedKey: strings.TrimSpace(cs[0].AuthorizedKey)}
	for k, c := range cs {
		// Each machine passes the single-machine checks.
		if _, err := UserData(CloudInit{Hostname: c.Hostname, User: c.User, AuthorizedKey: c.AuthorizedKey, HostKeyPrivate: c.HostKeyPrivate, HostKeyPublic: c.HostKeyPublic}); err != nil {
			return nil, fmt.Errorf("machine %d: %w", k, err)
		}
		if c.User != cs[0].User || strings.TrimSpace(c.AuthorizedKey) != data.AuthorizedKey || c.Extra != cs[0].Extra {
			return nil, errors.New("machines launched together must share the admin user, its key and the extra user-data")
		}
		// Jinja reads the whole document: nothing in it may open a Jinja
		// tag. Hostnames are DNS labels and keys base64; only the
		// authorized key's comment could hold a brace.
		for _, v := range []string{c.Hostname, c.AuthorizedKey, c.HostKeyPublic} {
			if strings.ContainsAny(v, "{}") {
				return nil, errors.New("a hostname or key holds a character Jinja would read: launch these machines one by one")
			}
		}
		data.Machines = append(data.Machines, machine{Index: fmt.Sprint(k), Hostname: c.Hostname, HostKeyPrivate: c.HostKeyPrivate, HostKeyPublic: strings.TrimSpace(c.HostKeyPublic)})
	}
	var buf bytes.Buffer
	if err := parsed.Lookup("cloud-init-batch.yaml.tmpl").Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("render cloud-init: %w", err)
	}
	if strings.TrimSpace(cs[0].Extra) == "" {
		return buf.Bytes(), nil
	}
	return multipartUserData(buf.Bytes(), []byte(cs[0].Extra))
}
