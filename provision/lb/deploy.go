package lb

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/jsonmessage"

	"github.com/provision/provision/provision/retry"
)

// The in-cluster reconciler: a swarm service on the managers running this
// same program (`provision lb sync --in-cluster`) from an image provision
// builds from its own binary and loads onto each manager through the Engine
// API. No registry, no Dockerfile.
const (
	ServiceName  = "provision-lb"
	ImageRepo    = "provision/lb"
	SecretPrefix = "provision-lb-"
	// BundleFile is where the task finds its Bundle (a swarm secret).
	BundleFile = "/run/secrets/provision-lb"
	// LabelCluster marks the service and secrets with the cluster ID.
	LabelCluster = "provision.cluster"
)

// Bundle is everything the in-cluster reconciler needs to build the same
// load balancers as the operator's provision: the spec with its variable
// values, the cluster ID and the credentials chosen for it. It holds secrets
// and travels only as a swarm secret (encrypted in the raft log, mounted on
// tmpfs in the task).
type Bundle struct {
	ClusterID string            `json:"cluster_id"`
	SpecName  string            `json:"spec_name"`
	Spec      []byte            `json:"spec"`
	VarArgs   []string          `json:"var_args,omitempty"`  // -var name=value
	VarFiles  []NamedFile       `json:"var_files,omitempty"` // -var-file contents, in order
	Env       map[string]string `json:"env,omitempty"`       // credentials and PROVISION_VAR_* for the drivers
}

// NamedFile is a file's base name and contents.
type NamedFile struct {
	Name string `json:"name"`
	Data []byte `json:"data"`
}

// Image is the reconciler's image: a gzip'd root filesystem holding the
// binary as /provision (with its loader and libraries when it has any), and its tag (from the binary's hash, so a new
// binary rolls the service and an unchanged one is not uploaded again).
type Image struct {
	Tag     string
	Arch    string // GOARCH-style: amd64, arm64
	RootTar []byte
}

// BuildImage packs binary (a Linux executable of this machine's kind) into
// an image root filesystem. A static binary goes alone; a dynamically linked
// one (make build links cgo for the libvirt driver) goes with its program
// interpreter and the shared libraries it names, taken from this machine
// where the dynamic linker finds them. libvirt is loaded only when the
// libvirt driver is used, which the reconciler never does.
func BuildImage(binary string) (*Image, error) {
	f, err := elf.Open(binary)
	if err != nil {
		return nil, fmt.Errorf("%s is not a Linux executable (%v): build one (GOOS=linux go build -o provision-linux ./cmd/provision) and pass --binary", binary, err)
	}
	arch := ""
	switch f.Machine {
	case elf.EM_X86_64:
		arch = "amd64"
	case elf.EM_AARCH64:
		arch = "arm64"
	default:
		arch = f.Machine.String()
	}
	f.Close()
	libs, err := runtimeFiles(binary)
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(bin)
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(gz)
	now := time.Unix(0, 0)
	dirs := map[string]bool{}
	dir := func(name string, mode int64) error {
		if dirs[name] {
			return nil
		}
		dirs[name] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: now})
	}
	file := func(name string, mode int64, data []byte) error {
		parts := strings.Split(name, "/")
		for i := 1; i < len(parts); i++ {
			if err := dir(strings.Join(parts[:i], "/"), 0o755); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: now}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := dir("tmp", 0o1777); err != nil {
		return nil, err
	}
	if err := dir("run", 0o755); err != nil {
		return nil, err
	}
	// A passwd for the SDKs that look up the current user.
	if err := file("etc/passwd", 0o644, []byte("root:x:0:0:root:/tmp:/provision\n")); err != nil {
		return nil, err
	}
	for _, l := range libs {
		data, err := os.ReadFile(l) // follows the link: the image holds the file under the name asked for
		if err != nil {
			return nil, err
		}
		if err := file(strings.TrimPrefix(l, "/"), 0o755, data); err != nil {
			return nil, err
		}
	}
	if err := file("provision", 0o755, bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return &Image{Tag: ImageRepo + ":" + hex.EncodeToString(sum[:6]), Arch: arch, RootTar: buf.Bytes()}, nil
}

// libDirs are where the dynamic linker looks on Debian-like and other
// common systems (multiarch first).
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// runtimeFiles lists what a dynamically linked binary needs to start: its
// program interpreter and the shared libraries it names, and theirs, by the
// paths the dynamic linker would use. None for a static binary.
func runtimeFiles(binary string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var walk func(path string, top bool) error
	walk = func(path string, top bool) error {
		f, err := elf.Open(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		defer f.Close()
		if top {
			for _, p := range f.Progs {
				if p.Type != elf.PT_INTERP {
					continue
				}
				b, err := io.ReadAll(p.Open())
				if err != nil {
					return fmt.Errorf("%s: program interpreter: %w", path, err)
				}
				interp := strings.TrimRight(string(b), "\x00")
				if !seen[interp] {
					seen[interp] = true
					out = append(out, interp)
				}
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: shared libraries: %w", path, err)
		}
		for _, l := range libs {
			if seen[l] {
				continue
			}
			seen[l] = true
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(d + "/" + l); err == nil {
					found = d + "/" + l
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s needs %s, which is not in %s: build a static binary (CGO_ENABLED=0 go build ./cmd/provision) and pass --binary", binary, l, strings.Join(libDirs, ", "))
			}
			out = append(out, found)
			if err := walk(found, false); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(binary, true); err != nil {
		return nil, err
	}
	return out, nil
}

// engineArch maps an engine's Info.Architecture to GOARCH.
func engineArch(a string) string {
	switch a {
	case "x86_64", "amd64":
		return "amd64"
	case "aarch64", "arm64":
		return "arm64"
	}
	return a
}

// LoadImage imports img onto one engine unless it has it already; it
// reports whether it uploaded.
func LoadImage(ctx context.Context, name string, en client.APIClient, img *Image) (bool, error) {
	info, err := en.Info(ctx)
	if err != nil {
		return false, fmt.Errorf("%s: engine info: %w", name, err)
	}
	if a := engineArch(info.Architecture); a != img.Arch {
		return false, fmt.Errorf("%s runs %s, the binary is built for %s: build one for the cluster (CGO_ENABLED=0 GOOS=linux GOARCH=%s go build ./cmd/provision) and pass --binary", name, a, img.Arch, a)
	}
	if _, err := en.ImageInspect(ctx, img.Tag); err == nil {
		return false, nil
	} else if !errdefs.IsNotFound(err) {
		return false, fmt.Errorf("%s: inspect image %s: %w", name, img.Tag, err)
	}
	rc, err := en.ImageImport(ctx, image.ImportSource{Source: bytes.NewReader(img.RootTar), SourceName: "-"}, img.Tag, image.ImportOptions{
		Message: "provision load balancer reconciler",
		Changes: []string{`ENTRYPOINT ["/provision"]`, `CMD ["lb", "sync", "--in-cluster"]`, `ENV TMPDIR=/tmp HOME=/tmp`},
	})
	if err != nil {
		return false, fmt.Errorf("%s: import image %s: %w", name, img.Tag, err)
	}
	defer rc.Close()
	if err := jsonmessage.DisplayJSONMessagesStream(rc, io.Discard, 0, false, nil); err != nil {
		return false, fmt.Errorf("%s: import image %s: %w", name, img.Tag, err)
	}
	return true, nil
}

// Deploy creates or updates the reconciler service on the swarm en manages:
// the bundle as a swarm secret (named by its hash; older ones removed once
// unused), one replica placed on a manager, the local engine's socket
// mounted, host networking (the instance metadata service answers only one
// hop away on AWS). Every manager must have the image (LoadImage) first.
func Deploy(ctx context.Context, en client.APIClient, clusterID string, img *Image, bundle Bundle) (changed bool, err error) {
	data, err := json.Marshal(bundle)
	if err != nil {
		return false, err
	}
	sum := sha256.Sum256(data)
	secretName := SecretPrefix + hex.EncodeToString(sum[:6])
	secrets, err := en.SecretList(ctx, swarm.SecretListOptions{Filters: filters.NewArgs(filters.Arg("label", LabelCluster+"="+clusterID))})
	if err != nil {
		return false, fmt.Errorf("list secrets: %w", err)
	}
	secretID := ""
	for _, s := range secrets {
		if s.Spec.Name == secretName {
			secretID = s.ID
		}
	}
	if secretID == "" {
		r, err := en.SecretCreate(ctx, swarm.SecretSpec{
			Annotations: swarm.Annotations{Name: secretName, Labels: map[string]string{LabelCluster: clusterID}},
			Data:        data,
		})
		if err != nil {
			return false, fmt.Errorf("create secret %s: %w", secretName, err)
		}
		secretID = r.ID
		changed = true
	}
	spec := serviceSpec(clusterID, img.Tag, secretID, secretName)
	cur, _, err := en.ServiceInspectWithRaw(ctx, ServiceName, swarm.ServiceInspectOptions{})
	switch {
	case errdefs.IsNotFound(err):
		if _, err := en.ServiceCreate(ctx, spec, swarm.ServiceCreateOptions{QueryRegistry: false}); err != nil {
			return false, fmt.Errorf("create service %s: %w", ServiceName, err)
		}
		changed = true
	case err != nil:
		return false, fmt.Errorf("inspect service %s: %w", ServiceName, err)
	default:
		if cur.Spec.Labels[LabelCluster] != clusterID {
			return false, fmt.Errorf("a service %s exists that provision did not make for this cluster (label %s=%q): remove it first", ServiceName, LabelCluster, cur.Spec.Labels[LabelCluster])
		}
		if sameSpec(cur.Spec, spec) {
			break
		}
		if _, err := en.ServiceUpdate(ctx, cur.ID, cur.Version, spec, swarm.ServiceUpdateOptions{QueryRegistry: false}); err != nil {
			return false, fmt.Errorf("update service %s: %w", ServiceName, err)
		}
		changed = true
	}
	// Older bundles: removed when no task uses them any more (the engine
	// refuses while one does; the next deploy tries again).
	for _, s := range secrets {
		if s.Spec.Name != secretName && strings.HasPrefix(s.Spec.Name, SecretPrefix) {
			_ = en.SecretRemove(ctx, s.ID)
		}
	}
	return changed, nil
}

func serviceSpec(clusterID, tag, secretID, secretName string) swarm.ServiceSpec {
	one := uint64(1)
	delay := 5 * time.Second
	return swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: ServiceName, Labels: map[string]string{LabelCluster: clusterID, LabelBalance: "off"}},
		Mode:        swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{
				Image:  tag,
				Args:   []string{"lb", "sync", "--in-cluster"},
				Labels: map[string]string{LabelCluster: clusterID},
				Mounts: []mount.Mount{
					{Type: mount.TypeBind, Source: "/var/run/docker.sock", Target: "/var/run/docker.sock"},
					{Type: mount.TypeTmpfs, Target: "/tmp", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 16 << 20, Mode: 0o1777}},
				},
				Secrets: []*swarm.SecretReference{{
					SecretID: secretID, SecretName: secretName,
					File: &swarm.SecretReferenceFileTarget{Name: "provision-lb", UID: "0", GID: "0", Mode: 0o400},
				}},
				StopGracePeriod: &delay,
			},
			Placement:     &swarm.Placement{Constraints: []string{"node.role==manager"}},
			RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &delay},
			Networks:      []swarm.NetworkAttachmentConfig{{Target: "host"}},
		},
	}
}

// sameSpec compares what Deploy sets.
func sameSpec(a, b swarm.ServiceSpec) bool {
	ca, cb := a.TaskTemplate.ContainerSpec, b.TaskTemplate.ContainerSpec
	if ca == nil || cb == nil || ca.Image != cb.Image || len(ca.Secrets) != 1 || ca.Secrets[0].SecretName != cb.Secrets[0].SecretName {
		return false
	}
	return strings.Join(ca.Args, " ") == strings.Join(cb.Args, " ")
}

// Undeploy removes the reconciler service and waits (up to a minute) until
// its task has stopped, so that nothing re-creates a load balancer that is
// about to be removed; then its secrets. No service is success.
func Undeploy(ctx context.Context, en client.APIClient, clusterID string) (removed bool, err error) {
	cur, _, err := en.ServiceInspectWithRaw(ctx, ServiceName, swarm.ServiceInspectOptions{})
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("inspect service %s: %w", ServiceName, err)
	}
	if cur.Spec.Labels[LabelCluster] != clusterID {
		return false, nil // not ours: leave it
	}
	// Scale to zero and wait for the task to stop (wherever it runs), then
	// remove the service.
	spec := cur.Spec
	zero := uint64(0)
	if spec.Mode.Replicated != nil {
		spec.Mode.Replicated.Replicas = &zero
		if _, err := en.ServiceUpdate(ctx, cur.ID, cur.Version, spec, swarm.ServiceUpdateOptions{}); err != nil {
			return false, fmt.Errorf("scale service %s to zero: %w", ServiceName, err)
		}
	}
	wait, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = retry.Backoff{First: 100 * time.Millisecond, Max: 2 * time.Second}.Poll(wait, func() (bool, error) {
		ts, err := en.TaskList(wait, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", cur.ID))})
		return err == nil && !anyRunning(ts), nil
	})
	if err != nil {
		return false, fmt.Errorf("service %s: its task did not stop within a minute", ServiceName)
	}
	if err := en.ServiceRemove(ctx, cur.ID); err != nil && !errdefs.IsNotFound(err) {
		return false, fmt.Errorf("remove service %s: %w", ServiceName, err)
	}
	f := filters.NewArgs(filters.Arg("label", LabelCluster+"="+clusterID))
	secrets, err := en.SecretList(ctx, swarm.SecretListOptions{Filters: f})
	if err == nil {
		for _, s := range secrets {
			if strings.HasPrefix(s.Spec.Name, SecretPrefix) {
				_ = en.SecretRemove(ctx, s.ID)
			}
		}
	}
	return true, nil
}

// anyRunning reports whether a task may still be running its container.
func anyRunning(ts []swarm.Task) bool {
	for _, t := range ts {
		switch t.Status.State {
		case swarm.TaskStateShutdown, swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateOrphaned, swarm.TaskStateRemove:
		default:
			if t.Status.State != "" && t.Status.State != swarm.TaskStateNew && t.Status.State != swarm.TaskStatePending {
				return true
			}
			if t.DesiredState == swarm.TaskStateRunning {
				return true
			}
		}
	}
	return false
}
