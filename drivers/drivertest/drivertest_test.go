package drivertest

import (
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
)

func TestNewHostKey(t *testing.T) {
	hk, pub := HostKey(t)
	if !strings.Contains(string(hk.PrivatePEM), "BEGIN OPENSSH PRIVATE KEY") {
		t.Fatalf("PrivatePEM is not in OpenSSH PEM form")
	}
	signer, err := ssh.ParsePrivateKey(hk.PrivatePEM)
	if err != nil {
		t.Fatal(err)
	}
	if signer.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Errorf("key type %s", signer.PublicKey().Type())
	}
	got, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hk.Public))
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Marshal()) != string(signer.PublicKey().Marshal()) || string(pub.Marshal()) != string(got.Marshal()) {
		t.Error("Public does not match PrivatePEM")
	}
	other, _ := HostKey(t)
	if SameKey(hk.Public, other.Public) {
		t.Error("two generated host keys are the same")
	}
}

func TestAdminKeyAndSpec(t *testing.T) {
	signer, line := AdminKey(t)
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if string(pk.Marshal()) != string(signer.PublicKey().Marshal()) {
		t.Error("authorized_keys line does not match the signer")
	}
	c1, c2 := ClusterID(t), ClusterID(t)
	if c1 == c2 || len(c1) != 20 {
		t.Errorf("cluster IDs %q %q", c1, c2)
	}
	s := Spec(t, c1, "m1", "manager", line)
	if s.Tags[drivers.TagCluster] != c1 || s.Tags[drivers.TagMachine] != "m1" || s.Tags[drivers.TagRole] != "manager" {
		t.Errorf("tags %v", s.Tags)
	}
	if s.SSH.PublicKey != line || s.SSH.User == "" || s.HostKey.Public == "" {
		t.Errorf("spec %+v", s)
	}
}

func TestSameKey(t *testing.T) {
	a, _ := HostKey(t)
	f := strings.Fields(a.Public)
	if !SameKey(a.Public, f[0]+" "+f[1]+" some comment") {
		t.Error("comment changes the key")
	}
	if SameKey(a.Public, "") || SameKey("ssh-ed25519", "ssh-ed25519") {
		t.Error("malformed lines compare equal")
	}
}
