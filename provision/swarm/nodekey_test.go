package swarm

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"testing"

	"github.com/provision/provision/provision/redact"
)

// The fixture is a node key as swarmkit writes it for an autolocked
// manager (testdata/nodekey/README), with its unlock key and raft DEKs.
const (
	fixtureUnlockKey = "SWMKEY-1-C2D0E2ZFcKyc6juWUDylkjyyV8pyk8uZ/+31MCUx+WU"
	fixtureDEK       = "cf22b58ecb915fbbe4de33e9a01a9e5bf6519ed7e534c1b5564fee8fcbb4ed7e"
	fixturePending   = "77c6d6cd0a2dd82a3e44a266333008aaa672415cecaef34a245b085a9e85aaf3"
)

// TestDecryptNodeKey: an autolocked node key is written in the clear the
// way swarmkit reads one without a KEK (the private key as unencrypted
// PKCS#8, the DEK headers as records marked not encrypted, no KEK version
// so that the swarm's KEK replaces it), trying each unlock key; a wrong
// key set is refused, a clear key is left alone.
func TestDecryptNodeKey(t *testing.T) {
	in, err := os.ReadFile("testdata/nodekey/swarm-node.key")
	if err != nil {
		t.Fatal(err)
	}
	if !NodeKeyEncrypted(in) {
		t.Fatal("the fixture does not read as encrypted")
	}
	wrong := "SWMKEY-1-" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	if _, err := DecryptNodeKey(in, []redact.Secret{redact.Secret(wrong)}); !errors.Is(err, ErrWrongUnlockKey) {
		t.Fatalf("wrong unlock key: %v", err)
	}
	out, err := DecryptNodeKey(in, []redact.Secret{redact.Secret(wrong), redact.Secret("not a key"), redact.Secret(fixtureUnlockKey)})
	if err != nil {
		t.Fatal(err)
	}
	if NodeKeyEncrypted(out) {
		t.Fatal("still encrypted")
	}
	b, rest := pem.Decode(out)
	if b == nil || len(rest) != 0 || b.Type != "PRIVATE KEY" {
		t.Fatalf("output:\n%s", out)
	}
	if _, err := x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
		t.Fatalf("private key: %v", err)
	}
	if _, ok := b.Headers[headerKEKVersion]; ok {
		t.Errorf("the KEK version was kept: %v", b.Headers)
	}
	if b.Headers["raft-dek-needs-rotation"] != "true" {
		t.Errorf("the DEK rotation flag was lost: %v", b.Headers)
	}
	for h, want := range map[string]string{headerRaftDEK: fixtureDEK, headerRaftDEKNew: fixturePending} {
		got, err := openRecord(b.Headers[h], nil)
		if err != nil || hex.EncodeToString(got) != want {
			t.Errorf("%s: %x (%v), want %s", h, got, err, want)
		}
	}
	if again, err := DecryptNodeKey(out, nil); err != nil || string(again) != string(out) {
		t.Errorf("a clear key is not left alone: %v", err)
	}
	if _, err := DecryptNodeKey([]byte("junk"), nil); err == nil {
		t.Error("junk accepted")
	}
}
