package drivers_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/redact"
)

var testHostKey = func() drivers.HostKey {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		panic(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return drivers.HostKey{PrivatePEM: redact.Secret(pem.EncodeToMemory(block)), Public: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))}
}()

var testUserKey = func() string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	sp, _ := ssh.NewPublicKey(pub)
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " operator@test"
}()

func spec(cluster, pool string, i int) drivers.MachineSpec {
	name := fmt.Sprintf("%s-%s-%d", cluster, pool, i)
	role := "worker"
	if pool == "manager" {
		role = "manager"
	}
	return drivers.MachineSpec{
		Name: name, Role: role, Pool: pool,
		Tags:    map[string]string{drivers.TagCluster: cluster, drivers.TagMachine: name, drivers.TagRole: role, drivers.TagPool: pool},
		SSH:     drivers.SSHAccess{User: "provision", PublicKey: testUserKey},
		HostKey: testHostKey,
	}
}

func TestRenderUserData(t *testing.T) {
	want := spec("c1", "manager", 1)
	ud, err := drivers.UserData(want)
	if err != nil {
		t.Fatal(err)
	}
	s := string(ud)
	if !strings.HasPrefix(s, "#cloud-config\n") {
		t.Errorf("no #cloud-config header:\n%s", s)
	}
	// The private key is a literal block indented under ed25519_private.
	pemLines := strings.Split(strings.TrimRight(string(want.HostKey.PrivatePEM), "\n"), "\n")
	var block []string
	for _, l := range pemLines {
		block = append(block, "    "+l)
	}
	if !strings.Contains(s, "  ed25519_private: |\n"+strings.Join(block, "\n")+"\n  ed25519_public: ") {
		t.Errorf("private key block malformed:\n%s", s)
	}
	for _, line := range []string{
		`hostname: "c1-manager-1"`,
		"ssh_deletekeys: true",
		"ssh_genkeytypes: []",
		`  ed25519_public: "` + testHostKey.Public + `"`,
		"disable_root: true",
		"ssh_pwauth: false",
		`  - name: "provision"`,
		`    sudo: "ALL=(ALL) NOPASSWD:ALL"`,
		`      - "` + testUserKey + `"`,
	} {
		if !strings.Contains(s, line+"\n") {
			t.Errorf("user-data lacks line %q:\n%s", line, s)
		}
	}
	// Quoting: a hostile comment cannot break out of its scalar.
	want.SSH.PublicKey = testUserKey + `" evil: "x`
	ud, err = drivers.UserData(want)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ud), `\" evil: \"x"`) {
		t.Errorf("authorized key not escaped:\n%s", ud)
	}
}

func TestRenderUserDataRefuses(t *testing.T) {
	base := spec("c1", "worker", 2)
	for name, mut := range map[string]func(*drivers.MachineSpec){
		"bad user":      func(m *drivers.MachineSpec) { m.SSH.User = "root; rm" },
		"empty user":    func(m *drivers.MachineSpec) { m.SSH.User = "" },
		"no key":        func(m *drivers.MachineSpec) { m.SSH.PublicKey = "" },
		"two keys":      func(m *drivers.MachineSpec) { m.SSH.PublicKey = testUserKey + "\n" + testUserKey },
		"no host key":   func(m *drivers.MachineSpec) { m.HostKey.PrivatePEM = nil },
		"rsa host key":  func(m *drivers.MachineSpec) { m.HostKey.Public = "ssh-rsa AAAA" },
		"no public key": func(m *drivers.MachineSpec) { m.HostKey.Public = "" },
	} {
		m := base
		mut(&m)
		_, err := drivers.UserData(m)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(err.Error(), string(base.HostKey.PrivatePEM[40:80])) {
			t.Errorf("%s: error shows the private key: %v", name, err)
		}
	}
}

func TestRenderUserDataMultipart(t *testing.T) {
	want := spec("c1", "worker", 1)
	want.UserData = "#!/bin/sh\necho hello > /tmp/hello\n"
	ud, err := drivers.UserData(want)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(ud))
	if err != nil {
		t.Fatalf("not a MIME message: %v\n%s", err, ud)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("content type %q: %v", mt, err)
	}
	r := multipart.NewReader(msg.Body, params["boundary"])
	var types, bodies []string
	for {
		p, err := r.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		types = append(types, ct)
		bodies = append(bodies, string(b))
	}
	if len(types) != 2 || types[0] != "text/cloud-config" || types[1] != "text/x-shellscript" {
		t.Fatalf("parts %v", types)
	}
	if !strings.HasPrefix(bodies[0], "#cloud-config\n") || bodies[1] != want.UserData {
		t.Errorf("bodies %q", bodies)
	}

	// A second cloud-config merges without replacing provision's settings.
	want.UserData = "#cloud-config\npackages: [htop]\n"
	ud, _ = drivers.UserData(want)
	if !strings.Contains(string(ud), "Merge-Type: list(append)+dict(no_replace,recurse_list)+str()") {
		t.Errorf("no merge type on the spec's cloud-config:\n%s", ud)
	}
}
