//go:build acceptance

package acceptance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/swarm"
)

// upgradeSpec: 3 managers and 2 workers, hardening off (not the subject),
// the engine package pinned by a variable.
const upgradeSpec = `
variable "engine" {
  type = string
}
name = "upgrade"
driver "local" {}
engine {
  version = var.engine
}
hardening {
  profile = "off"
}
managers {
  count = 3
}
workers {
  count = 2
}
`

const (
	upgradeService  = "upgrade-web"
	upgradeReplicas = 4
	repoDir         = "/srv/provision-upgrade-repo"
)

// TestEngineUpgrade is issue 16's rolling engine upgrade on real hosts: the
// cluster is made with the distro's docker.io at its exact version, then a
// local apt repository made here (the same engine repackaged as a higher
// version) is given to every host and the pin moved to it. plan shows the
// upgrade and its order; apply takes the nodes one batch at a time, each
// drained first, while a replicated service keeps running; every node ends
// on the new package, Ready and active, managers Reachable; a second apply
// changes nothing; the old pin is a downgrade that plan names and apply
// refuses without --allow-engine-downgrade, changing nothing.
func TestEngineUpgrade(t *testing.T) {
	hostTest(t) // each local-host test has its own cluster, network and state; longest first, a few at a time (schedule_test.go)
	requireAcc(t)
	dc := dockerClient(t)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// The engine package the hosts get from the distro, and the same
	// package repackaged as the next version.
	from, debs := upgradeRepo(t, ctx, dir)
	to := from + "+provision1"

	d := &day2{dc: dc, spec: filepath.Join(dir, "upgrade.hcl"), stateDir: filepath.Join(dir, "state"),
		vars: map[string]string{"engine": from}, svc: upgradeService, replicas: upgradeReplicas}
	if err := os.WriteFile(d.spec, []byte(upgradeSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			provision(t, context.Background(), nil, d.args("destroy", "--auto-approve")...)
		}
	})
	w := d.watch(t, ctx) // feeds the test image to every engine
	mustProvision(t, ctx, nil, d.args("apply", "--auto-approve")...)
	w.end()
	d.clusterID = d.state(t).ClusterID
	made := time.Since(t0)
	startUpgradeService(t, ctx, d)

	// The repository, on every host.
	for _, m := range d.state(t).Machines {
		files := map[string]file{strings.TrimPrefix(repoDir, "/") + "/Packages": {0o644, debs["Packages"]},
			strings.TrimPrefix(repoDir, "/") + "/Release":   {0o644, debs["Release"]},
			"etc/apt/sources.list.d/provision-upgrade.list": {0o644, []byte("deb [trusted=yes] file:" + repoDir + " ./\n")}}
		for name, b := range debs {
			if strings.HasSuffix(name, ".deb") {
				files[strings.TrimPrefix(repoDir, "/")+"/"+name] = file{0o644, b}
			}
		}
		if err := dc.CopyToContainer(ctx, m.ID, "/", tarFiles(files), container.CopyToContainerOptions{}); err != nil {
			t.Fatalf("repository to %s: %v", m.Name, err)
		}
	}

	// plan: the upgrade, node by node, managers first.
	d.vars["engine"] = to
	p := mustProvision(t, ctx, nil, d.args("plan")...)
	t.Logf("plan:\n%s", p.stdout)
	order := regexp.MustCompile(`(?m)^\s+(\d)\. (upgrade-\w+-\d) \(`+regexp.QuoteMeta(from)+`\)$`).FindAllStringSubmatch(p.stdout, -1)
	var planned []string
	for _, m := range order {
		planned = append(planned, m[2])
	}
	if want := "upgrade-manager-1 upgrade-manager-2 upgrade-manager-3 upgrade-worker-1 upgrade-worker-2"; strings.Join(planned, " ") != want ||
		!strings.Contains(p.stdout, "Engine upgrade (docker.io to "+to) || strings.Contains(p.stdout, "DOWNGRADE") {
		t.Errorf("plan order %v, want %s", planned, want)
	}

	// A node that fails its upgrade stops the rollout. Managers go
	// followers first, the leader last: the second follower's copy of the
	// new package is taken away, so its install fails after the first
	// follower is done. apply fails naming it, leaves it drained (its tasks
	// already run elsewhere), and touches no later node (the leader, the
	// workers). Watched from outside, with the full upgrade after it.
	var leader string
	var followers []string
	lnodes, err := d.manager(t, ctx).Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range lnodes {
		switch {
		case n.ManagerStatus == nil:
		case n.ManagerStatus.Leader:
			leader = n.Description.Hostname
		default:
			followers = append(followers, n.Description.Hostname)
		}
	}
	sort.Strings(followers)
	if leader == "" || len(followers) != 2 {
		t.Fatalf("leader %q, followers %v", leader, followers)
	}
	first, failing := followers[0], followers[1]
	w = d.watch(t, ctx)
	broken := d.containerOf(t, ctx, failing)
	if out, err := runIn(ctx, dc, broken, []string{"sh", "-c", "mkdir -p /root/held && mv " + repoDir + "/*.deb /root/held/"}); err != nil {
		t.Fatalf("hide the package on %s: %v %s", failing, err, out)
	}
	heldBack := []string{leader, "upgrade-worker-1", "upgrade-worker-2"}
	sort.Strings(heldBack)
	r := provision(t, ctx, nil, d.args("apply", "--auto-approve", "--json")...)
	if r.code == 0 || !strings.Contains(r.stderr, "Failed: "+failing+".") ||
		!strings.Contains(r.stderr, "Held back, untouched, because a rolling batch before them failed: "+strings.Join(heldBack, ", ")+".") {
		t.Fatalf("apply with %s's package missing (leader %s): exit %d\n%s", failing, leader, r.code, r.stderr)
	}
	t.Logf("failed rollout (%s, leader %s): %s", r.took.Round(time.Second), leader, linesWith(r.stderr, "Failed:"))
	failedRollout := r
	mgr0 := d.manager(t, ctx)
	nodes0, err := mgr0.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	avail := map[string]swarm.NodeAvailability{}
	for _, n := range nodes0 {
		avail[n.Description.Hostname] = n.Spec.Availability
	}
	for _, name := range []string{"upgrade-manager-1", "upgrade-manager-2", "upgrade-manager-3", "upgrade-worker-1", "upgrade-worker-2"} {
		want := from
		if name == first {
			want = to
		}
		out, err := runIn(ctx, dc, d.containerOf(t, ctx, name), []string{"dpkg-query", "-W", "-f=${Version}", "docker.io"})
		if err != nil || strings.TrimSpace(out) != want {
			t.Errorf("after the failed rollout %s has docker.io %q (%v), want %s", name, out, err, want)
		}
		wantAvail := swarm.NodeAvailabilityActive
		if name == failing {
			wantAvail = swarm.NodeAvailabilityDrain
		}
		if avail[name] != wantAvail {
			t.Errorf("after the failed rollout %s is %q, want %s", name, avail[name], wantAvail)
		}
	}
	if out, err := runIn(ctx, dc, broken, []string{"sh", "-c", "mv /root/held/*.deb " + repoDir + "/"}); err != nil {
		t.Fatalf("give the package back to %s: %v %s", failing, err, out)
	}

	// apply: the rest of the rollout, from the failed node on.
	r = mustProvision(t, ctx, nil, d.args("apply", "--auto-approve", "--json")...)
	w.end()
	t.Logf("upgrade: %d samples, fewest reachable managers %d (at %s), fewest running tasks %d of %d (at %s: %s), longest time no manager answered %s, apply %s",
		w.samples, w.minManagers, w.lowManagersAt, w.minRunning, upgradeReplicas, w.lowTaskAt, w.lowTasks, w.maxSilence.Round(time.Millisecond), r.took.Round(time.Second))
	if !w.checkManagers(t, 2) {
		t.Logf("failed rollout's events:\n%s\nfinishing apply's events:\n%s", timeline(failedRollout.stdout), timeline(r.stdout))
	}
	// Docker's drain stops a node's tasks before their replacements run;
	// for a start-first service provision runs the replacements first (the
	// node paused, the service scaled up by what it ran there, then drained
	// and scaled back), so the service keeps its replicas the whole time.
	if w.minRunning < upgradeReplicas {
		t.Errorf("only %d of %d tasks running at %s: %s", w.minRunning, upgradeReplicas, w.lowTaskAt, w.lowTasks)
		t.Logf("apply events:\n%s", timeline(r.stdout))
	}
	upgradeTook := r.took
	var batches []string
	for _, l := range strings.Split(r.stdout, "\n") { // --json: events on stdout
		var ev struct{ Kind, Msg string }
		if json.Unmarshal([]byte(l), &ev) == nil && strings.HasPrefix(ev.Msg, "rolling batch ") {
			batches = append(batches, ev.Msg)
		}
	}
	t.Logf("batches:\n%s", strings.Join(batches, "\n"))
	if len(batches) != 4 || !strings.Contains(batches[0], failing+" (engine upgrade") || !strings.Contains(batches[1], leader+" (engine upgrade") || !strings.Contains(batches[3], "upgrade-worker-2 (engine upgrade: drained first)") {
		t.Errorf("rolling batches: %v", batches)
	}

	// Every node on the new package, Ready and active, managers Reachable.
	var st struct {
		Machines []struct {
			Name          string `json:"name"`
			EnginePackage string `json:"engine_package"`
			NodeID        string `json:"node_id"`
		} `json:"machines"`
	}
	b, _ := os.ReadFile(filepath.Join(d.stateDir, "state.json"))
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	mgr := d.manager(t, ctx)
	nodes, err := mgr.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]swarm.Node{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	for _, m := range st.Machines {
		n := byID[m.NodeID]
		if m.EnginePackage != to || n.Status.State != swarm.NodeStateReady || n.Spec.Availability != swarm.NodeAvailabilityActive ||
			(n.ManagerStatus != nil && n.ManagerStatus.Reachability != swarm.ReachabilityReachable) {
			t.Errorf("%s: package %s, node %s %s %+v", m.Name, m.EnginePackage, n.Status.State, n.Spec.Availability, n.ManagerStatus)
		}
		out, err := runIn(ctx, dc, d.containerOf(t, ctx, m.Name), []string{"dpkg-query", "-W", "-f=${Version}", "docker.io"})
		if err != nil || strings.TrimSpace(out) != to {
			t.Errorf("%s: dpkg says docker.io %q (%v)", m.Name, out, err)
		}
	}
	upgradeFull(t, ctx, d)

	// Converged: nothing to do.
	if p := mustProvision(t, ctx, nil, d.args("plan")...); !strings.Contains(p.stdout, "No changes") {
		t.Errorf("plan after the upgrade:\n%s", p.stdout)
	}

	// The old pin is a downgrade: stated, refused, nothing changed.
	d.vars["engine"] = from
	p = mustProvision(t, ctx, nil, d.args("plan")...)
	if !strings.Contains(p.stdout, "DOWNGRADE") || !strings.Contains(p.stdout, "--allow-engine-downgrade") {
		t.Errorf("plan does not state the downgrade:\n%s", p.stdout)
	}
	r = provision(t, ctx, nil, d.args("apply", "--auto-approve")...)
	if r.code == 0 || !strings.Contains(r.stderr, "--allow-engine-downgrade") {
		t.Errorf("downgrade apply: exit %d\n%s", r.code, r.stderr)
	}
	if nodes, err := mgr.Nodes(ctx); err == nil {
		for _, n := range nodes {
			if n.Spec.Availability != swarm.NodeAvailabilityActive {
				t.Errorf("%s left %s by a refused downgrade", n.Description.Hostname, n.Spec.Availability)
			}
		}
	}

	mustProvision(t, ctx, nil, d.args("destroy", "--auto-approve")...)
	destroyed = true
	t.Logf("TestEngineUpgrade: cluster made in %s, upgrade apply %s, whole test %s", made.Round(time.Second), upgradeTook.Round(time.Second), time.Since(t0).Round(time.Second))
}

// upgradeRepo downloads the distro's docker.io on this machine, repackages
// it as the next version (same files, version + "+provision1") and indexes
// it as a flat apt repository: the files by name, "Packages" and "Release".
// It returns the distro's version.
func upgradeRepo(t *testing.T, ctx context.Context, dir string) (string, map[string][]byte) {
	t.Helper()
	dl := filepath.Join(dir, "dl")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(dir string, name string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
		}
		return string(out)
	}
	run(dl, "apt-get", "download", "-q", "docker.io")
	matches, _ := filepath.Glob(filepath.Join(dl, "docker.io_*.deb"))
	if len(matches) != 1 {
		t.Fatalf("downloaded %v", matches)
	}
	from := strings.TrimSpace(run(dl, "dpkg-deb", "-f", matches[0], "Version"))
	to := from + "+provision1"
	tree := filepath.Join(dir, "tree")
	run(dir, "dpkg-deb", "-R", matches[0], tree)
	ctl := filepath.Join(tree, "DEBIAN", "control")
	b, err := os.ReadFile(ctl)
	if err != nil {
		t.Fatal(err)
	}
	b = regexp.MustCompile(`(?m)^Version: .*$`).ReplaceAll(b, []byte("Version: "+to))
	if err := os.WriteFile(ctl, b, 0o644); err != nil {
		t.Fatal(err)
	}
	repo := filepath.Join(dir, "repo")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	name := "docker.io_" + strings.ReplaceAll(to, ":", "%3a") + "_amd64.deb"
	run(dir, "dpkg-deb", "-Zgzip", "-z1", "-b", tree, filepath.Join(repo, name))
	pk := run(repo, "dpkg-scanpackages", "-m", ".")
	deb, err := os.ReadFile(filepath.Join(repo, name))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(pk))
	var rel bytes.Buffer
	fmt.Fprintf(&rel, "Origin: provision-test\nLabel: provision-test\nDate: %s\nSHA256:\n %s %d Packages\n",
		time.Now().UTC().Format(time.RFC1123Z), hex.EncodeToString(sum[:]), len(pk))
	t.Logf("local repository: docker.io %s -> %s (%d MB)", from, to, len(deb)>>20)
	return from, map[string][]byte{name: deb, "Packages": []byte(pk), "Release": rel.Bytes()}
}

// startUpgradeService runs a replicated service of the test image and waits
// until all its tasks run.
func startUpgradeService(t *testing.T, ctx context.Context, d *day2) {
	t.Helper()
	mgr := d.manager(t, ctx)
	replicas := uint64(upgradeReplicas)
	grace := time.Second
	if _, err := mgr.ServiceCreate(ctx, swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: upgradeService},
		TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{
			Image: testImage, Command: []string{"/bin/httpd", "-f", "-p", "8080", "-h", "/"}, StopGracePeriod: &grace,
		}},
		Mode: swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &replicas}},
		// Start-first: the service may run an old and a new task at once,
		// so drains start its tasks elsewhere before they stop here.
		UpdateConfig: &swarm.UpdateConfig{Order: swarm.UpdateOrderStartFirst},
	}, swarm.ServiceCreateOptions{}); err != nil {
		t.Fatalf("create service: %v", err)
	}
	upgradeFull(t, ctx, d)
}

func upgradeFull(t *testing.T, ctx context.Context, d *day2) {
	t.Helper()
	eventually(t, ctx, 3*time.Minute, "service at full replicas", func() error {
		n, err := runningTasks(ctx, d.manager(t, ctx), upgradeService)
		if err == nil && n != upgradeReplicas {
			err = fmt.Errorf("%d of %d tasks running", n, upgradeReplicas)
		}
		return err
	})
}

// linesWith is the lines of s that contain sub, for a log.
func linesWith(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "\n")
}
