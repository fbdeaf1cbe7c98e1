package hostos

import "testing"

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0", 0},
		{"1.0", "1.1", -1},
		{"1.10", "1.9", 1},
		{"1.0~rc1", "1.0", -1},
		{"1.0", "1.0+b1", -1},
		{"1:1.0", "2.0", 1},
		{"20.10.24+dfsg1-1+b3", "20.10.24+dfsg1-1+deb12u1+b6", -1},
		{"20.10.24+dfsg1-1+deb12u1+b6", "20.10.24+dfsg1-1+deb12u1+b6+provision2", -1},
		{"24.0.5+dfsg1-1", "20.10.24+dfsg1-1+deb12u1+b6", 1},
		{"1.0-1", "1.0-1", 0},
		{"1.0a", "1.0+", -1},
		{"1.001", "1.1", 0},
	} {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := CompareVersions(c.b, c.a); got != -c.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", c.b, c.a, got, -c.want)
		}
	}
	for _, c := range []struct {
		have, pin string
		want      bool
	}{
		{"24.0.5+dfsg1-1", "20.10*", true},
		{"20.10.24+dfsg1-1+deb12u1+b6", "20.10.24*", false},
		{"20.10.5+dfsg1-1", "20.10.24*", false},
		{"20.10.24+dfsg1-1+deb12u1+b6+provision2", "20.10.24+dfsg1-1+deb12u1+b6", true},
		{"20.10.24+dfsg1-1+deb12u1+b6", "20.10.24+dfsg1-1+deb12u1+b6+provision2", false},
		{"", "1.0", false},
		{"1.0", "", false},
	} {
		if got := Downgrade(c.have, c.pin); got != c.want {
			t.Errorf("Downgrade(%q, %q) = %v, want %v", c.have, c.pin, got, c.want)
		}
	}
}
