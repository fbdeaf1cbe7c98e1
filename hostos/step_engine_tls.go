package hostos

// engine.tls: the engine's CA, server certificate and key. dockerd reads
// them only at start: a change restarts the engine (once, with
// engine.config's, at the end of the engine steps).
func stepEngineTLS() *Step {
	return &Step{
		ID:             "engine.tls",
		Files:          files(PathTLSCA, PathTLSCert, PathTLSKey),
		Units:          []string{"docker.service"},
		RestartsEngine: true,
		// dockerd loads certificates only when it starts, and live-restore
		// is refused under swarm: the restart stops the node's tasks.
		Drain:        always,
		DrainReason:  "engine restart for new certificates",
		BeforeEngine: true,
		Certs:        []Cert{CertServer},
		Undo:         Undo{After: "rmdir /etc/docker/tls >/dev/null 2>&1"},
		render: func(t *Target, _ Family) ([]File, error) {
			return TLSFilesOf(t.Config)
		},
	}
}
