package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/api/types/volume"
)

type fakeAPI struct {
	stats map[string]container.StatsResponse
}

func (f *fakeAPI) Info(context.Context) (system.Info, error) {
	return system.Info{Containers: 3, ContainersRunning: 2, NCPU: 4, MemTotal: 8 << 30, DockerRootDir: "/var/lib/docker"}, nil
}

func (f *fakeAPI) ContainerList(context.Context, container.ListOptions) ([]container.Summary, error) {
	return []container.Summary{{ID: "a"}, {ID: "b"}, {ID: "gone"}}, nil
}

func (f *fakeAPI) ContainerStats(_ context.Context, id string, stream bool) (container.StatsResponseReader, error) {
	if stream {
		return container.StatsResponseReader{}, errors.New("stream asked")
	}
	st, ok := f.stats[id]
	if !ok {
		return container.StatsResponseReader{}, errors.New("no such container")
	}
	b, _ := json.Marshal(st)
	return container.StatsResponseReader{Body: io.NopCloser(strings.NewReader(string(b)))}, nil
}

func (f *fakeAPI) DiskUsage(context.Context, types.DiskUsageOptions) (types.DiskUsage, error) {
	return types.DiskUsage{
		LayersSize: 1000,
		Containers: []*container.Summary{{SizeRw: 10}, nil, {SizeRw: 5}},
		Volumes:    []*volume.Volume{{UsageData: &volume.UsageData{Size: 100}}, {UsageData: &volume.UsageData{Size: -1}}},
		BuildCache: []*build.CacheRecord{{Size: 7}, {Size: 1000, Shared: true}},
	}, nil
}

func sample(cpu, pre, sys, presys, mem, inactive uint64) container.StatsResponse {
	var st container.StatsResponse
	st.CPUStats.CPUUsage.TotalUsage, st.PreCPUStats.CPUUsage.TotalUsage = cpu, pre
	st.CPUStats.SystemUsage, st.PreCPUStats.SystemUsage = sys, presys
	st.MemoryStats.Usage = mem
	st.MemoryStats.Stats = map[string]uint64{"inactive_file": inactive}
	return st
}

func TestSummary(t *testing.T) {
	api := &fakeAPI{stats: map[string]container.StatsResponse{
		// a: 100 of 1000 ns of host time (all CPUs) = 10 %; b: 250 of 1000 = 25 %.
		"a": sample(1100, 1000, 11000, 10000, 300, 100),
		"b": sample(250, 0, 2000, 1000, 50, 80), // cache above usage counts as none
	}}
	n, err := Summary(context.Background(), api)
	if err != nil {
		t.Fatal(err)
	}
	if n.Containers != 3 || n.Running != 2 || n.CPUs != 4 || n.MemTotal != 8<<30 || n.DiskRoot != "/var/lib/docker" {
		t.Errorf("info: %+v", n)
	}
	if n.CPUPercent < 34.99 || n.CPUPercent > 35.01 {
		t.Errorf("cpu %v, want 35", n.CPUPercent)
	}
	if n.MemUsed != 200+50 {
		t.Errorf("memory %d, want 250", n.MemUsed)
	}
	if n.DiskUsed != 1000+10+5+100+7 {
		t.Errorf("disk %d, want 1122", n.DiskUsed)
	}
	if n.Partial != "no stats from 1 of 3 containers" {
		t.Errorf("partial %q", n.Partial)
	}
}

func TestCPUPercentWithoutPreviousSample(t *testing.T) {
	if p := cpuPercent(sample(500, 0, 1000, 0, 0, 0), 2); p != 0 {
		t.Errorf("no previous sample: %v, want 0", p)
	}
}

func TestFileSD(t *testing.T) {
	gs := FileSD("demo", []Target{
		{Node: "demo-worker-1", Role: "worker", Pool: "worker", Address: "10.0.0.3:9323"},
		{Node: "demo-manager-1", Role: "manager", Pool: "manager", Address: "10.0.0.2:9323"},
		{Node: "demo-worker-2", Role: "worker", Pool: "worker"}, // not created yet
	})
	b, _ := json.Marshal(gs)
	want := `[{"targets":["10.0.0.2:9323"],"labels":{"cluster":"demo","job":"docker","node":"demo-manager-1","pool":"manager","role":"manager"}},` +
		`{"targets":["10.0.0.3:9323"],"labels":{"cluster":"demo","job":"docker","node":"demo-worker-1","pool":"worker","role":"worker"}}]`
	if string(b) != want {
		t.Errorf("file_sd:\n got %s\nwant %s", b, want)
	}
	if b, _ := json.Marshal(FileSD("demo", nil)); string(b) != "[]" {
		t.Errorf("empty: %s", b)
	}
}
