package aws

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"mime/multipart"
	"net/textproto"
	"regexp"
	"strings"
	"text/template"

	"github.com/provision/provision/drivers"
)

// The cloud-init template lives here until the shared templates/ package can
// take it over.
//
//go:embed cloud-init.yaml.tmpl
var cloudInitText string

var cloudInitTmpl = template.Must(template.New("cloud-init").Option("missingkey=error").Funcs(template.FuncMap{
	// quote renders a YAML double-quoted scalar (a JSON string is one).
	"quote": func(s string) (string, error) {
		b, err := json.Marshal(s)
		return string(b), err
	},
	"indent": func(n int, s string) string {
		pad := strings.Repeat(" ", n)
		lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
		for i, l := range lines {
			lines[i] = pad + l
		}
		return strings.Join(lines, "\n")
	},
}).Parse(cloudInitText))

type cloudInit struct {
	Hostname       string
	User           string
	AuthorizedKey  string
	HostKeyPrivate string
	HostKeyPublic  string
}

var userRe = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// renderUserData returns the instance's user-data: provision's cloud-config
// (admin user, pinned host key), followed by the spec's own user-data as a
// second MIME part when there is one. The result holds the private host key:
// it goes to the EC2 API and nowhere else (never a log or an error).
func renderUserData(want drivers.MachineSpec) ([]byte, error) {
	switch {
	case !userRe.MatchString(want.SSH.User):
		return nil, fmt.Errorf("admin user %q is not a valid login name", want.SSH.User)
	case strings.TrimSpace(want.SSH.PublicKey) == "" || strings.ContainsAny(strings.TrimSpace(want.SSH.PublicKey), "\r\n"):
		return nil, errors.New("the SSH public key must be one authorized_keys line")
	case len(want.HostKey.PrivatePEM) == 0 || want.HostKey.Public == "":
		return nil, errors.New("no SSH host key: the engine must generate one before creating the machine")
	case !strings.HasPrefix(want.HostKey.Public, "ssh-ed25519 "):
		return nil, errors.New("the SSH host key must be ed25519")
	}
	var buf bytes.Buffer
	err := cloudInitTmpl.Execute(&buf, cloudInit{
		Hostname:       want.Name,
		User:           want.SSH.User,
		AuthorizedKey:  strings.TrimSpace(want.SSH.PublicKey),
		HostKeyPrivate: string(want.HostKey.PrivatePEM),
		HostKeyPublic:  strings.TrimSpace(want.HostKey.Public),
	})
	if err != nil {
		// Template errors name fields, never values.
		return nil, fmt.Errorf("render cloud-init: %w", err)
	}
	if strings.TrimSpace(want.UserData) == "" {
		return buf.Bytes(), nil
	}
	return multipartUserData(buf.Bytes(), []byte(want.UserData))
}

// multipartUserData joins two user-data parts the way cloud-init reads them.
func multipartUserData(first, second []byte) ([]byte, error) {
	var out bytes.Buffer
	w := multipart.NewWriter(&out)
	fmt.Fprintf(&out, "Content-Type: multipart/mixed; boundary=%q\r\nMIME-Version: 1.0\r\n\r\n", w.Boundary())
	for i, part := range [][]byte{first, second} {
		ct := "text/cloud-config"
		if i == 1 {
			ct = userDataType(part)
		}
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
