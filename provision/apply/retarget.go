package apply

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
)

// swarmStateFile is the engine's record of its own swarm addresses inside
// /var/lib/docker.
const swarmStateFile = "swarm/docker-state.json"

// retargetRaftArchive copies a raft backup (a gzipped tar of swarm/) from
// src to dst with the engine's own address record rewritten for the
// manager it is restored on. A backup holds the addresses of the manager it
// was copied from (listen, advertise, data path): restored on another
// manager, or on a later generation at another address, the engine could
// not bind them ("cannot assign requested address"), did not start its
// swarm and --force-new-cluster failed after the node's own swarm
// directory had been replaced. The other fields are kept as they are.
func retargetRaftArchive(src io.Reader, dst io.Writer, advertise string) error {
	zr, err := gzip.NewReader(src)
	if err != nil {
		return fmt.Errorf("not a gzip archive: %w", err)
	}
	zw := gzip.NewWriter(dst)
	tw := tar.NewWriter(zw)
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if h.Name != swarmStateFile && h.Name != "./"+swarmStateFile {
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			if _, err := io.Copy(tw, tr); err != nil {
				return err
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		var st map[string]any
		if err := json.Unmarshal(data, &st); err != nil {
			return fmt.Errorf("%s: %w", swarmStateFile, err)
		}
		st["ListenAddr"] = net.JoinHostPort("0.0.0.0", "2377")
		st["AdvertiseAddr"] = net.JoinHostPort(advertise, "2377")
		if s, _ := st["DataPathAddr"].(string); s != "" {
			st["DataPathAddr"] = advertise
		}
		if s, _ := st["LocalAddr"].(string); s != "" {
			st["LocalAddr"] = advertise
		}
		out, err := json.Marshal(st)
		if err != nil {
			return err
		}
		h.Size = int64(len(out))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, bytes.NewReader(out)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// raftArchiveAddress is the address the manager a raft backup was copied
// from advertised (its swarm/docker-state.json), "" when the archive does
// not say. The raft records every member's address, its own included, and
// --force-new-cluster keeps it: restored at another address, the swarm
// tells joining managers (and workers) to reach it at the old one.
func raftArchiveAddress(src io.Reader) (string, error) {
	zr, err := gzip.NewReader(src)
	if err != nil {
		return "", fmt.Errorf("not a gzip archive: %w", err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		if h.Name != swarmStateFile && h.Name != "./"+swarmStateFile {
			continue
		}
		var st struct{ AdvertiseAddr, LocalAddr string }
		if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&st); err != nil {
			return "", fmt.Errorf("%s: %w", swarmStateFile, err)
		}
		for _, a := range []string{st.AdvertiseAddr, st.LocalAddr} {
			if a == "" {
				continue
			}
			if host, _, err := net.SplitHostPort(a); err == nil {
				return host, nil
			}
			return a, nil
		}
		return "", nil
	}
}
