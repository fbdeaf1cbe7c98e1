// Package metrics reads a short live summary of a node from its engine API
// (containers, CPU, memory, the disk /var/lib/docker uses) and makes the
// Prometheus file_sd target list of a cluster's engine metrics endpoints.
package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/system"
)

// API is the part of the engine API a summary reads; *client.Client
// implements it.
type API interface {
	Info(ctx context.Context) (system.Info, error)
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerStats(ctx context.Context, containerID string, stream bool) (container.StatsResponseReader, error)
	DiskUsage(ctx context.Context, options types.DiskUsageOptions) (types.DiskUsage, error)
}

// Node is one node's summary.
type Node struct {
	Containers int     `json:"containers"`        // all containers
	Running    int     `json:"running"`           // running containers
	CPUs       int     `json:"cpus"`              // the host's CPUs
	CPUPercent float64 `json:"cpu_percent"`       // running containers' CPU use, percent of the whole host (100 = every CPU busy)
	MemUsed    uint64  `json:"memory_used"`       // running containers' memory without page cache, bytes
	MemTotal   uint64  `json:"memory_total"`      // the host's memory, bytes
	DiskUsed   int64   `json:"disk_used"`         // images, containers' writable layers, volumes and build cache under the engine's root, bytes
	DiskRoot   string  `json:"docker_root"`       // the engine's root directory (/var/lib/docker)
	Partial    string  `json:"partial,omitempty"` // what could not be read (some containers' stats)
}

// statsLimit bounds the stats requests in flight per node: each takes about
// a second (the engine samples CPU twice).
const statsLimit = 8

// Summary reads one node's summary: Info, the running containers' stats (one
// sample each, taken side by side) and DiskUsage.
func Summary(ctx context.Context, api API) (Node, error) {
	info, err := api.Info(ctx)
	if err != nil {
		return Node{}, fmt.Errorf("engine info: %w", err)
	}
	n := Node{Containers: info.Containers, Running: info.ContainersRunning, CPUs: info.NCPU, MemTotal: uint64(info.MemTotal), DiskRoot: info.DockerRootDir}
	du, err := api.DiskUsage(ctx, types.DiskUsageOptions{})
	if err != nil {
		return Node{}, fmt.Errorf("disk usage: %w", err)
	}
	n.DiskUsed = diskUsed(du)
	cs, err := api.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return Node{}, fmt.Errorf("list containers: %w", err)
	}
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		failed int
		sem    = make(chan struct{}, statsLimit)
	)
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			st, err := stats(ctx, api, c.ID)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			n.CPUPercent += cpuPercent(st, info.NCPU)
			n.MemUsed += memUsed(st.MemoryStats)
		}()
	}
	wg.Wait()
	if failed > 0 {
		n.Partial = fmt.Sprintf("no stats from %d of %d containers", failed, len(cs))
	}
	return n, nil
}

func stats(ctx context.Context, api API, id string) (container.StatsResponse, error) {
	r, err := api.ContainerStats(ctx, id, false)
	if err != nil {
		return container.StatsResponse{}, err
	}
	defer r.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
		return container.StatsResponse{}, fmt.Errorf("stats of %s: %w", id, err)
	}
	return st, nil
}

// cpuPercent is a container's CPU use between the engine's two samples, as a
// percent of the whole host (the docker CLI shows it per CPU: times cpus).
func cpuPercent(st container.StatsResponse, cpus int) float64 {
	cpu := float64(st.CPUStats.CPUUsage.TotalUsage) - float64(st.PreCPUStats.CPUUsage.TotalUsage)
	sys := float64(st.CPUStats.SystemUsage) - float64(st.PreCPUStats.SystemUsage)
	if cpu <= 0 || sys <= 0 || st.PreCPUStats.SystemUsage == 0 {
		return 0
	}
	return cpu / sys * 100
}

// memUsed is the memory a container uses without its page cache, as the
// docker CLI counts it (cgroup v2: inactive_file; v1: total_inactive_file).
func memUsed(m container.MemoryStats) uint64 {
	cache, ok := m.Stats["inactive_file"]
	if !ok {
		cache = m.Stats["total_inactive_file"]
	}
	if cache > m.Usage {
		return m.Usage
	}
	return m.Usage - cache
}

// diskUsed adds up what the engine stores: image layers (shared ones once),
// containers' writable layers, volumes and the build cache.
func diskUsed(du types.DiskUsage) int64 {
	total := du.LayersSize
	for _, c := range du.Containers {
		if c != nil {
			total += c.SizeRw
		}
	}
	for _, v := range du.Volumes {
		if v != nil && v.UsageData != nil && v.UsageData.Size > 0 {
			total += v.UsageData.Size
		}
	}
	for _, b := range du.BuildCache {
		if b != nil && !b.Shared {
			total += b.Size
		}
	}
	return total
}

// Target is one node's metrics endpoint.
type Target struct {
	Node    string // machine name
	Role    string
	Pool    string
	Address string // host:port
}

// Group is one entry of a Prometheus file_sd file.
type Group struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// FileSD is the file_sd target list: one group per node, labelled with the
// cluster and the node's name, role and pool, in node name order.
func FileSD(cluster string, ts []Target) []Group {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Node < ts[j].Node })
	out := []Group{}
	for _, t := range ts {
		if t.Address == "" {
			continue
		}
		out = append(out, Group{
			Targets: []string{t.Address},
			Labels:  map[string]string{"job": "docker", "cluster": cluster, "node": t.Node, "role": t.Role, "pool": t.Pool},
		})
	}
	return out
}
