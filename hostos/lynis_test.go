package hostos

import "testing"

func TestParseLynisReport(t *testing.T) {
	rep := []byte(`# Lynis Report
report_version_major=1
lynis_tests_done=231
hardening_index=82
warning[]=PKGS-7392|Found one or more vulnerable packages.|-|-|
suggestion[]=AUTH-9262|Install a PAM module for password strength testing like pam_cracklib or pam_passwdqc|-|-|
suggestion[]=SSH-7408|Consider hardening SSH configuration|AllowTcpForwarding (set YES to NO)|-|
`)
	r, err := ParseLynisReport(rep)
	if err != nil {
		t.Fatal(err)
	}
	if r.Index != 82 || r.Tests != 231 || len(r.Warnings) != 1 || len(r.Suggestions) != 2 {
		t.Fatalf("%+v", r)
	}
	if r.Warnings[0] != "PKGS-7392: Found one or more vulnerable packages." {
		t.Errorf("warning %q", r.Warnings[0])
	}
	if _, err := ParseLynisReport([]byte("garbage\n")); err == nil {
		t.Error("report without index accepted")
	}
}
