package hostos_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/provision/provision/hostos"
)

// An operator's drop-in that sorts before provision's, or a Match block in
// sshd_config, wins over harden.ssh's drop-in: the step must not report the
// host hardened while sshd lets root and passwords in.
func TestSSHOverriddenByOperatorConfig(t *testing.T) {
	eff := "sshd\tpermitrootlogin\tyes\nsshd\tpasswordauthentication\tyes\nsshd\tallowtcpforwarding\tno\n" +
		"src\t/etc/ssh/sshd_config.d/00-ops.conf\n"
	fc := &fakeComm{answers: []answer{{match: `"$USER"`, out: eff}}}
	tgt := &hostos.Target{Comm: fc, Facts: debianFacts(), Config: baseConfig(), Log: slog.New(slog.DiscardHandler)}
	tgt.Relogin = func(ctx context.Context) error { return nil }
	st := stepByID(t, tgt.Config, "harden.ssh")
	err := st.Apply(context.Background(), tgt)
	if err == nil {
		t.Fatal("apply passed while sshd's effective settings are not the drop-in's")
	}
	for _, want := range []string{"permitrootlogin yes (want no)", "passwordauthentication yes (want no)", "00-ops.conf", "hardening.ssh = false"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "allowtcpforwarding") {
		t.Errorf("a setting that matches is named: %v", err)
	}
	if done, _ := st.Check(context.Background(), tgt); done {
		t.Error("step counts as done while overridden")
	}
	// The override gone: a re-apply (file unchanged) checks again and passes.
	fc.answers = []answer{{match: `"$USER"`, out: "sshd\tpermitrootlogin\tno\nsshd\tpasswordauthentication\tno\n"}}
	if err := st.Apply(context.Background(), tgt); err != nil {
		t.Fatalf("apply after the override went: %v", err)
	}
	if done, _ := st.Check(context.Background(), tgt); !done {
		t.Error("step not done once sshd applies the drop-in")
	}
}

// Facts carry the effective values; Check reads them, and sshd -T's
// without-password is prohibit-password (an admin user root).
func TestSSHEffectiveFromFacts(t *testing.T) {
	out := "ssh_client\t198.51.100.7\nsshd\tpermitrootlogin\twithout-password\nsshd\tx11forwarding\tno\nend\n"
	f, err := hostos.ParseFacts([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if f.SSHD["permitrootlogin"] != "without-password" || f.SSHD["x11forwarding"] != "no" {
		t.Fatalf("sshd facts %v", f.SSHD)
	}
	cfg := baseConfig()
	cfg.AdminUser = "root"
	files, err := hostos.SSHDFiles(cfg)
	if err != nil {
		t.Fatal(err)
	}
	facts := debianFacts()
	facts.Files[hostos.PathSSHD] = files[0].Sum()
	facts.Units["ssh.service"] = "active"
	facts.SSHD = f.SSHD
	tgt := &hostos.Target{Comm: &fakeComm{}, Facts: facts, Config: cfg, Log: slog.New(slog.DiscardHandler)}
	st := stepByID(t, cfg, "harden.ssh")
	if done, err := st.Check(context.Background(), tgt); err != nil || !done {
		t.Fatalf("check %v %v: prohibit-password is sshd -T's without-password", done, err)
	}
	facts.SSHD["x11forwarding"] = "yes"
	if done, _ := st.Check(context.Background(), tgt); done {
		t.Error("an X11Forwarding override counts as done")
	}
}
