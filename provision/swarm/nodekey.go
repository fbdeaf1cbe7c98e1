package swarm

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha1"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/nacl/secretbox"
	"golang.org/x/crypto/pbkdf2"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/provision/provision/provision/redact"
)

// An autolocked manager keeps its swarm TLS key encrypted with the key
// encryption key (KEK) behind the unlock key, and the raft's data
// encryption keys (DEKs) in that key file's PEM headers, encrypted with the
// KEK too. Docker cannot re-form a swarm from such a node: `swarm init
// --force-new-cluster` starts the node without the unlock key and fails
// ("Swarm is encrypted and needs to be unlocked", moby/moby#36852). So
// quorum recovery and restore first write the key file as an unlocked
// manager has it (the key and DEKs in the clear, as swarmkit writes them
// when autolock is turned off) and re-form the swarm. Docker's re-formed
// swarm has autolock off; apply turns it on again (a new unlock key, kept
// in the state directory) and the manager encrypts the file with it (its
// KEK version is dropped, so the swarm's is newer and replaces it).

// NodeKeyPath is where the engine keeps the swarm node's TLS key.
const NodeKeyPath = "/var/lib/docker/swarm/certificates/swarm-node.key"

// PEM headers of the node key (swarmkit's ca and manager packages).
const (
	headerKEKVersion = "kek-version"
	headerRaftDEK    = "raft-dek"
	headerRaftDEKNew = "raft-dek-pending"
)

// ErrWrongUnlockKey means none of the unlock keys opens the node key.
var ErrWrongUnlockKey = errors.New("none of the unlock keys provision holds opens the swarm node key")

// NodeKeyEncrypted reports whether a node key file is encrypted (autolock).
func NodeKeyEncrypted(keyPEM []byte) bool {
	block, _ := pem.Decode(keyPEM)
	return block != nil && (block.Type == "ENCRYPTED PRIVATE KEY" || x509.IsEncryptedPEMBlock(block)) //nolint:staticcheck // swarmkit writes legacy PEM encryption for PKCS#1 keys
}

// DecryptNodeKey returns the node key file keyPEM with its private key and
// raft DEKs in the clear, trying each unlock key ("SWMKEY-1-..."). A key
// that is not encrypted comes back unchanged.
func DecryptNodeKey(keyPEM []byte, unlockKeys []redact.Secret) ([]byte, error) {
	block, rest := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("swarm node key: no PEM block")
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("swarm node key: more than one PEM block")
	}
	if !NodeKeyEncrypted(keyPEM) {
		return keyPEM, nil
	}
	for _, uk := range unlockKeys {
		kek, err := parseUnlockKey(string(uk))
		if err != nil {
			continue
		}
		out, err := decryptWith(block, kek)
		if err == nil {
			return out, nil
		}
	}
	return nil, ErrWrongUnlockKey
}

// parseUnlockKey reads "SWMKEY-1-<base64>" into the KEK.
func parseUnlockKey(s string) ([]byte, error) {
	const prefix = "SWMKEY-1-"
	if !strings.HasPrefix(s, prefix) {
		return nil, errors.New("not an unlock key")
	}
	return base64.RawStdEncoding.DecodeString(strings.TrimPrefix(s, prefix))
}

func decryptWith(block *pem.Block, kek []byte) ([]byte, error) {
	var der []byte
	var typ string
	var err error
	if block.Type == "ENCRYPTED PRIVATE KEY" {
		der, err = decryptPKCS8(block.Bytes, kek)
		typ = "PRIVATE KEY"
		if err == nil {
			_, err = x509.ParsePKCS8PrivateKey(der)
		}
	} else {
		der, err = x509.DecryptPEMBlock(block, kek) //nolint:staticcheck // the format swarmkit uses for PKCS#1 keys
		typ = "EC PRIVATE KEY"
		if err == nil {
			_, err = x509.ParseECPrivateKey(der)
		}
	}
	if err != nil {
		return nil, err
	}
	headers := map[string]string{}
	for k, v := range block.Headers {
		switch k {
		case "Proc-Type", "DEK-Info", headerKEKVersion:
			// The legacy encryption's own headers; the KEK version is
			// dropped so that the swarm's KEK replaces "none".
		case headerRaftDEK, headerRaftDEKNew:
			dek, err := openRecord(v, kek)
			if err != nil {
				return nil, fmt.Errorf("%s header: %w", k, err)
			}
			headers[k] = plainRecord(dek)
		default:
			headers[k] = v
		}
	}
	return pem.EncodeToMemory(&pem.Block{Type: typ, Headers: headers, Bytes: der}), nil
}

// PBES2 (PBKDF2-SHA1, AES-256-CBC) as swarmkit's pkcs8 package writes it.
var (
	oidPBES2     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidAES256CBC = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
)

type encryptedPrivateKeyInfo struct {
	Algo struct {
		ID     asn1.ObjectIdentifier
		Params struct {
			KDF struct {
				ID     asn1.ObjectIdentifier
				Params struct {
					Salt       []byte
					Iterations int
				}
			}
			Scheme struct {
				ID asn1.ObjectIdentifier
				IV []byte
			}
		}
	}
	Data []byte
}

func decryptPKCS8(der, password []byte) ([]byte, error) {
	var info encryptedPrivateKeyInfo
	if _, err := asn1.Unmarshal(der, &info); err != nil {
		return nil, fmt.Errorf("encrypted PKCS#8: %w", err)
	}
	p := info.Algo.Params
	if !info.Algo.ID.Equal(oidPBES2) || !p.KDF.ID.Equal(oidPBKDF2) || !p.Scheme.ID.Equal(oidAES256CBC) {
		return nil, errors.New("encrypted PKCS#8: only PBES2 with PBKDF2 and AES-256-CBC")
	}
	if len(info.Data) == 0 || len(info.Data)%aes.BlockSize != 0 || len(p.Scheme.IV) != aes.BlockSize {
		return nil, errors.New("encrypted PKCS#8: bad sizes")
	}
	c, err := aes.NewCipher(pbkdf2.Key(password, p.KDF.Params.Salt, p.KDF.Params.Iterations, 32, sha1.New))
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(info.Data))
	cipher.NewCBCDecrypter(c, p.Scheme.IV).CryptBlocks(out, info.Data)
	pad := int(out[len(out)-1])
	if pad == 0 || pad > aes.BlockSize || pad > len(out) {
		return nil, errors.New("encrypted PKCS#8: wrong key")
	}
	return out[:len(out)-pad], nil
}

// MaybeEncryptedRecord (swarmkit api/types.proto): 1 algorithm (0 none, 1
// NaCl secretbox), 2 data, 3 nonce.
const (
	recordNone      = 0
	recordSecretbox = 1
)

// openRecord decodes a DEK header: base64 of a MaybeEncryptedRecord.
func openRecord(v string, kek []byte) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, err
	}
	var alg uint64
	var data, nonce []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			alg, n = protowire.ConsumeVarint(b)
		case num == 2 && typ == protowire.BytesType:
			data, n = protowire.ConsumeBytes(b)
		case num == 3 && typ == protowire.BytesType:
			nonce, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
	}
	switch alg {
	case recordNone:
		return data, nil
	case recordSecretbox:
		if len(nonce) != 24 || len(kek) != 32 {
			return nil, errors.New("secretbox record: bad nonce or key size")
		}
		var nn [24]byte
		var key [32]byte
		copy(nn[:], nonce)
		copy(key[:], kek)
		out, ok := secretbox.Open(nil, data, &nn, &key)
		if !ok {
			return nil, ErrWrongUnlockKey
		}
		return out, nil
	}
	return nil, fmt.Errorf("record encrypted with algorithm %d (FIPS mode's Fernet is not read)", alg)
}

// plainRecord encodes a DEK header in the clear (algorithm none).
func plainRecord(data []byte) string {
	var b []byte
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, data)
	return base64.StdEncoding.EncodeToString(b)
}

// Sealed reports whether Docker refused to re-form a swarm because the
// manager's raft is encrypted (autolock; moby/moby#36852).
func Sealed(err error) bool {
	return err != nil && strings.Contains(err.Error(), "needs to be unlocked")
}

// ReformSealed re-forms the swarm on an autolocked manager Docker refused
// to re-form it on: unseal writes the node key in the clear and restarts
// the engine, then --force-new-cluster is tried until the engine takes it
// (bounded, naming the host). A raft with quorum on its own (a restored
// one-manager swarm) runs again after the restart and would encrypt the
// key again at once: autolock is then turned off through the API before
// the swarm is re-formed (apply turns it on again), and a round that lost
// that race is done once more.
func ReformSealed(ctx context.Context, h *Host, unseal func(context.Context, *Host) error, note func(host, msg string)) (Local, error) {
	note(h.Name, "its raft is encrypted (autolock), which Docker cannot re-form a swarm from: writing its node key in the clear with the unlock key and restarting its engine; autolock is turned on again once the swarm is re-formed")
	var last error
	for round := 1; round <= 3; round++ {
		if round > 1 {
			note(h.Name, "the engine encrypted its node key again before the swarm was re-formed: once more")
		}
		if err := unseal(ctx, h); err != nil {
			return Local{}, fmt.Errorf("%s: unseal the autolocked node key: %w", h.Name, err)
		}
		var l Local
		err := Wait{Host: h.Name, What: "its engine to re-form the swarm after the restart", Timeout: 2 * time.Minute, Progress: note}.Until(ctx, func(ctx context.Context) (bool, string, error) {
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			what, _ := h.EnsureSecurity(sctx, Security{Autolock: false})
			cancel()
			if len(what) > 0 {
				note(h.Name, "autolock turned off for the swarm to be re-formed (apply turns it on again)")
			}
			got, err := h.forceNewCluster(ctx)
			if err != nil {
				if Sealed(err) {
					return false, "", err
				}
				return false, err.Error(), nil
			}
			l = got
			return true, "", nil
		})
		if err == nil {
			return l, nil
		}
		if !Sealed(err) {
			return Local{}, err
		}
		last = err
	}
	return Local{}, last
}
