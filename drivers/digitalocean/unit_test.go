package digitalocean

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/drivertest"
)

func TestBackoff(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	lo, hi := time.Second, 30*time.Second
	resp := func(code int, kv ...string) *http.Response {
		h := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return &http.Response{StatusCode: code, Header: h}
	}
	reset := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	for _, tc := range []struct {
		name     string
		attempt  int
		resp     *http.Response
		min, max time.Duration
	}{
		{"retry-after seconds", 0, resp(429, "Retry-After", "7"), 7 * time.Second, 7 * time.Second},
		{"retry-after date", 0, resp(429, "Retry-After", now.Add(12*time.Second).UTC().Format(http.TimeFormat)), 12 * time.Second, 12 * time.Second},
		{"reset soon", 0, resp(429, "RateLimit-Remaining", "0", "RateLimit-Reset", reset(5*time.Second)), 5 * time.Second, 5500 * time.Millisecond},
		{"reset past the cap", 0, resp(429, "RateLimit-Remaining", "0", "RateLimit-Reset", reset(time.Hour)), hi, hi},
		{"reset already past", 3, resp(429, "RateLimit-Remaining", "0", "RateLimit-Reset", reset(-time.Minute)), lo, lo},
		{"429 without headers backs off", 2, resp(429), 4 * time.Second, 4400 * time.Millisecond},
		{"5xx backs off", 0, resp(503), lo, 1100 * time.Millisecond},
		{"connection error", 3, nil, 8 * time.Second, 8800 * time.Millisecond},
		{"capped", 10, resp(500), hi, hi},
	} {
		got := backoffAt(now, lo, hi, tc.attempt, tc.resp)
		if got < tc.min || got > tc.max {
			t.Errorf("%s: %s, want %s..%s", tc.name, got, tc.min, tc.max)
		}
	}
}

func TestHostKeyTag(t *testing.T) {
	hk, _ := drivertest.HostKey(t)
	v, err := hostKeyTag(hk.Public)
	if err != nil || len(v) != 64 || !validTag(tag(TagHostKey, v)) {
		t.Fatalf("tag %q: %v", v, err)
	}
	if back := hostKeyFromTag(v); back != hk.Public {
		t.Errorf("round trip %q, want %q", back, hk.Public)
	}
	if _, err := hostKeyTag("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDP"); err == nil {
		t.Error("an rsa key was accepted")
	}
	if hostKeyFromTag("zz") != "" {
		t.Error("a bad tag value gave a key")
	}
}

func TestTags(t *testing.T) {
	_, admin := drivertest.AdminKey(t)
	s := drivertest.Spec(t, "0123456789abcdef", "demo-manager-1", "manager", admin)
	tags := dropletTags("0123456789abcdef", s, "ab")
	for _, tg := range tags {
		if !validTag(tg) {
			t.Errorf("invalid tag %q", tg)
		}
	}
	m := tagsOf(append(tags, "web", "team:ops"))
	if m[drivers.TagCluster] != "0123456789abcdef" || m[drivers.TagMachine] != "demo-manager-1" || m[TagUser] != "provision" || len(m) != 6 {
		t.Errorf("tags back: %v", m)
	}
	if checkTags(drivers.MachineSpec{Tags: map[string]string{drivers.TagPool: "a b"}}) == nil {
		t.Error("a pool with a space was accepted as a tag")
	}
	if n := volumeName("0123456789abcdef", strings.Repeat("m", 80), 1); len(n) != 64 || !strings.HasSuffix(n, "-0123456") {
		t.Errorf("volume name %q", n)
	}

	// A spec's generation tag counts past the first generation only, and
	// the spec's Generation is what is tagged.
	s.Tags[drivers.TagGeneration] = "1"
	if m := tagsOf(dropletTags("0123456789abcdef", s, "ab")); len(m) != 6 || drivers.GenerationOf(m) != 1 {
		t.Errorf("first generation's tags: %v", m)
	}
	s.Generation = 3
	if m := tagsOf(dropletTags("0123456789abcdef", s, "ab")); len(m) != 7 || m[drivers.TagGeneration] != "3" || m[drivers.TagMachine] != "demo-manager-1" {
		t.Errorf("third generation's tags: %v", m)
	}
	// A long machine name is shortened before the generation suffix: the
	// two generations' volumes never share a name.
	long := strings.Repeat("m", 80)
	if a, b := volumeName("0123456789abcdef", long, 1), volumeName("0123456789abcdef", long, 2); a == b || len(b) != 64 || !strings.HasSuffix(b, "-g2-0123456") {
		t.Errorf("volume names %q, %q", a, b)
	}
	if n := volumeName("0123456789abcdef", "demo-manager-1", 2); n != "demo-manager-1-g2-0123456" {
		t.Errorf("volume name %q", n)
	}
}
