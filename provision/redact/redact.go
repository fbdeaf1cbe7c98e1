// Package redact keeps secrets out of logs, errors and state.
package redact

import (
	"log/slog"
	"strings"
)

// Secret is bytes that must never be printed: fmt, slog and encoding/json all
// see "REDACTED".
type Secret []byte

func (Secret) String() string               { return "REDACTED" }
func (Secret) GoString() string             { return "REDACTED" }
func (Secret) LogValue() slog.Value         { return slog.StringValue("REDACTED") }
func (Secret) MarshalText() ([]byte, error) { return []byte("REDACTED"), nil }

// String replaces every occurrence of each non-empty secret in s.
func String(s string, secrets ...string) string {
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "REDACTED")
		}
	}
	return s
}
