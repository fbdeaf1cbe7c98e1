package drivers_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"strconv"
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

// renderJinja renders a user-data document the way cloud-init does for an
// EC2 instance with launch index idx (its "## template: jinja" header
// dropped, Jinja with the instance data, then YAML), with this machine's
// python3 Jinja2 and PyYAML (moto's own dependencies, so present wherever
// the AWS tests run).
func renderJinja(t *testing.T, doc []byte, idx int) map[string]any {
	t.Helper()
	const py = `import sys, json, jinja2, yaml
doc = sys.stdin.read()
head, _, body = doc.partition("\n")
assert head.strip() == "## template: jinja", head
out = jinja2.Template(body).render(ds={"meta_data": {"ami-launch-index": sys.argv[1]}})
print(json.dumps(yaml.safe_load(out)))
`
	cmd := exec.Command("python3", "-c", py, strconv.Itoa(idx))
	cmd.Stdin = bytes.NewReader(doc)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if strings.Contains(stderr.String(), "No module named") || errors.Is(err, exec.ErrNotFound) {
			if os.Getenv("PROVISION_REQUIRE_MOTO") == "1" {
				t.Fatalf("python3 with jinja2 and yaml is required (PROVISION_REQUIRE_MOTO=1): %v %s", err, stderr.String())
			}
			t.Skipf("python3 with jinja2 and yaml not available: %v", err)
		}
		t.Fatalf("render index %d: %v\n%s\n%s", idx, err, stderr.String(), doc)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return m
}

// TestBatchUserData: one user-data for three instances launched together;
// rendered for launch index k it is machine k's hostname and host key and
// nobody else's, with the shared admin user; values Jinja would read are
// refused, as are machines that do not share the admin user.
func TestBatchUserData(t *testing.T) {
	var want []drivers.MachineSpec
	for i := 1; i <= 3; i++ {
		s := spec("c1", "worker", i)
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		block, _ := ssh.MarshalPrivateKey(priv, "")
		sp, _ := ssh.NewPublicKey(pub)
		s.HostKey = drivers.HostKey{PrivatePEM: redact.Secret(pem.EncodeToMemory(block)), Public: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))}
		want = append(want, s)
	}
	ud, err := drivers.BatchUserData(want)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(ud), "## template: jinja\n#cloud-config\n") {
		t.Fatalf("header:\n%s", ud)
	}
	for k, w := range want {
		m := renderJinja(t, ud, k)
		keys, _ := m["ssh_keys"].(map[string]any)
		if m["hostname"] != w.Name || keys["ed25519_public"] != w.HostKey.Public || strings.TrimSpace(fmt.Sprint(keys["ed25519_private"])) != strings.TrimSpace(string(w.HostKey.PrivatePEM)) {
			t.Errorf("index %d: hostname %v, keys %v", k, m["hostname"], keys["ed25519_public"])
		}
		users, _ := m["users"].([]any)
		if len(users) != 1 || m["ssh_deletekeys"] != true || m["ssh_pwauth"] != false {
			t.Errorf("index %d: common settings %v", k, m)
		}
		b, _ := json.Marshal(m)
		for j, o := range want {
			if j != k && strings.Contains(string(b), o.Name) {
				t.Errorf("index %d's rendering holds machine %d's settings", k, j)
			}
		}
	}
	// An index outside the batch gets no hostname and no key: cloud-init
	// then makes none, and the pinned key does not match (never a silent
	// wrong one).
	if m := renderJinja(t, ud, 7); m["hostname"] != nil || m["ssh_keys"] != nil {
		t.Errorf("index 7: %v", m)
	}
	// With the spec's own user-data, the batch document is the first part
	// of a multipart, typed for cloud-init's Jinja handler.
	for i := range want {
		want[i].UserData = "#!/bin/sh\necho extra\n"
	}
	if ud, err = drivers.BatchUserData(want); err != nil || !strings.Contains(string(ud), "Content-Type: text/jinja2") {
		t.Errorf("multipart: %v\n%s", err, ud)
	}
	bad := append([]drivers.MachineSpec(nil), want...)
	bad[1].SSH.PublicKey = testUserKey + "{{ evil }}"
	if _, err := drivers.BatchUserData(bad); err == nil {
		t.Error("a key with a Jinja brace accepted")
	}
	bad = append([]drivers.MachineSpec(nil), want...)
	bad[2].SSH.User = "other"
	if _, err := drivers.BatchUserData(bad); err == nil {
		t.Error("machines with different admin users accepted")
	}
}
