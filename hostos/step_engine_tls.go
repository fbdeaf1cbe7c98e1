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
		BeforeEngine:   true,
		Certs:          []Cert{CertServer},
		Undo:           Undo{After: "rmdir /etc/docker/tls >/dev/null 2>&1"},
		render: func(t *Target, _ Family) ([]File, error) {
			return TLSFilesOf(t.Config)
		},
	}
}
