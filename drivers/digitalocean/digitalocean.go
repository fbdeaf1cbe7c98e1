// Package digitalocean is the DigitalOcean driver: droplets made through the
// official client (godo), tagged with the cluster ID in the create call
// itself, reached over a pinned SSH host key handed to cloud-init, behind a
// cloud firewall and in a VPC of the cluster's own.
//
// The block (region is required; allowed_cidrs or detect_operator_ip is
// required while the cloud firewall is on):
//
//	driver "digitalocean" {
//	  token              = var.do_token        # else DIGITALOCEAN_TOKEN; declare the variable sensitive
//	  region             = "ams3"
//	  size               = "s-2vcpu-2gb"       # pools' size overrides it
//	  image              = "debian-12-x64"     # slug or numeric ID
//	  vpc_uuid           = "..."               # an existing VPC; default: one made for the cluster
//	  vpc_ip_range       = "10.42.0.0/20"      # the made VPC's range; default: DigitalOcean picks one
//	  allowed_cidrs      = ["203.0.113.7/32"]  # who reaches 22 and 2376
//	  detect_operator_ip = false               # true: ask operator_ip_url for this machine's address
//	  cloud_firewall     = true                # false: no cloud firewall (needed for overlay_encryption: it carries no ESP)
//	  ipv6               = false
//	  monitoring         = false               # DigitalOcean's metrics agent
//	  api_url            = "http://127.0.0.1:8080/" # tests and emulators only, see below
//	}
//
// Ownership is kept in droplet and volume tags, which DigitalOcean limits to
// letters, digits, ':', '-' and '_': `provision-cluster:<id>`,
// `provision-machine:<name>`, `provision-role:<role>`, `provision-pool:<pool>`,
// `provision-user:<login>` and `provision-hostkey:<hex of the ed25519 key>`
// (the pinned host key, so that a droplet adopted after a crash is reached
// with the key cloud-init installed). VPCs and SSH keys take no tags: the
// driver finds what it made by name (`provision-<id>`, plus `-<alias>` for a
// driver block with an alias) and, for VPCs, by the description it wrote, and
// removes only that.
//
// Two generations of one machine exist at once while a replacement rolls
// (the new one joins the swarm before the old one leaves). Generation n's
// droplet is named drivers.InstanceName(name, n) ("<name>-g<n>" past the
// first), its volume likewise, and both are tagged `provision-generation:<n>`;
// the first generation keeps the machine name and no generation tag, as
// before generations existed. The guest's host name, hence its swarm node
// name, and the provision-machine tag stay the machine name.
//
// The token is read on first use (never in New), held as a redact.Secret and
// sent only to api_url's host: https, or plain http to a loopback address;
// redirects are refused; a request for any other host is refused before the
// token is attached; and with api_url set, DIGITALOCEAN_TOKEN is ignored (the
// token must be in the block), so a spec cannot send an ambient token away.
package digitalocean

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/godo"
	"github.com/hashicorp/go-retryablehttp"
	"github.com/hashicorp/hcl/v2"
	"golang.org/x/crypto/ssh"
	"golang.org/x/oauth2"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/retry"
)

func init() {
	drivers.Register("digitalocean", New)
}

// Tag keys the driver adds besides the drivers.Tag* ownership tags.
const (
	TagHostKey = "provision-hostkey" // value: hex of the ed25519 host key (authorized_keys form in Machine.Tags)
	TagUser    = "provision-user"    // the admin user cloud-init created
)

// Driver makes droplets. It is safe for concurrent use.
type Driver struct {
	cfg  Config
	name string
	log  *slog.Logger

	// waitMin is the first delay between polls (droplet active, deleted,
	// VPC empty); retryMin and retryMax bound the API client's retry
	// backoff; depTimeout bounds waiting for a VPC or volume to be released.
	// Tests shorten them.
	waitMin    time.Duration
	retryMin   time.Duration
	retryMax   time.Duration
	retries    int
	depTimeout time.Duration
	// httpClient is used for the operator address lookup only.
	httpClient *http.Client
	// getenv reads DIGITALOCEAN_TOKEN (tests replace it).
	getenv func(string) string

	clientMu sync.Mutex
	client   *godo.Client

	sharedMu sync.Mutex
	shared   map[string]*clusterShared // by cluster ID

	names drivers.NameLocks // serializes Create per cluster/machine

	catalog catalog
}

var (
	_ drivers.Driver      = (*Driver)(nil)
	_ drivers.Teardown    = (*Driver)(nil)
	_ drivers.Preflighter = (*Driver)(nil)
	_ drivers.Resourcer   = (*Driver)(nil)
)

// New decodes a `driver "digitalocean" { ... }` block. It does no I/O and
// reads no token.
func New(body hcl.Body, opts drivers.Options) (drivers.Driver, hcl.Diagnostics) {
	cfg, diags := decodeConfig(body, opts.Eval)
	if diags.HasErrors() {
		return nil, diags
	}
	return newDriver(cfg, opts), diags
}

func newDriver(cfg Config, opts drivers.Options) *Driver {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := opts.Name
	if name == "" {
		name = "digitalocean"
	}
	return &Driver{
		cfg:        cfg,
		name:       name,
		log:        log.With("driver", name),
		waitMin:    3 * time.Second,
		retryMin:   time.Second,
		retryMax:   30 * time.Second,
		retries:    6,
		depTimeout: 5 * time.Minute,
		httpClient: &http.Client{Timeout: 10 * time.Second},
		getenv:     os.Getenv,
		shared:     map[string]*clusterShared{},
	}
}

// errNoToken says where a token comes from.
var errNoToken = errors.New("no DigitalOcean token: set token = var.<name> (a variable declared sensitive) in the driver block, or " + TokenEnv)

// token returns the block's token, else DIGITALOCEAN_TOKEN (only with the
// default API URL).
func (d *Driver) token() (string, error) {
	if len(d.cfg.Token) > 0 {
		return string(d.cfg.Token), nil
	}
	if d.cfg.CustomAPI && d.cfg.APIURL.String() != DefaultAPIURL {
		return "", errors.New("no DigitalOcean token in the driver block: with api_url set, " + TokenEnv + " is not used")
	}
	if t := strings.TrimSpace(d.getenv(TokenEnv)); t != "" {
		return t, nil
	}
	return "", errNoToken
}

// api returns the godo client, made on first use. A failure is not cached.
//
// godo's retrying client (go-retryablehttp under an oauth2.Transport) is
// kept, with three changes made after godo.New built it: the retry policy
// retries 429 for every request and 5xx and connection failures only where
// repeating cannot make something twice (never a POST whose answer was lost:
// the driver looks before it creates again); the backoff reads the
// rate-limit headers of the answer; and the transport refuses redirects and
// any host but api_url's before the token is attached.
func (d *Driver) api() (*godo.Client, error) {
	d.clientMu.Lock()
	defer d.clientMu.Unlock()
	if d.client != nil {
		return d.client, nil
	}
	tok, err := d.token()
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &oauth2.Transport{Source: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok})}}
	wmin, wmax := d.retryMin.Seconds(), d.retryMax.Seconds()
	c, err := godo.New(hc,
		godo.SetBaseURL(d.cfg.APIURL.String()),
		godo.SetUserAgent("provision"),
		godo.WithRetryAndBackoffs(godo.RetryConfig{RetryMax: d.retries, RetryWaitMin: &wmin, RetryWaitMax: &wmax, Logger: debugLogger{d.log}}),
	)
	if err != nil {
		return nil, fmt.Errorf("digitalocean client: %w", err)
	}
	ot, ok := c.HTTPClient.Transport.(*oauth2.Transport)
	if !ok {
		return nil, fmt.Errorf("digitalocean client: godo's transport is %T, not the oauth2 transport this driver was written for", c.HTTPClient.Transport)
	}
	rt, ok := ot.Base.(*retryablehttp.RoundTripper)
	if !ok || rt.Client == nil || rt.Client.HTTPClient == nil {
		return nil, fmt.Errorf("digitalocean client: godo's retrying transport is %T, not the one this driver was written for", ot.Base)
	}
	rt.Client.CheckRetry = checkRetry
	rt.Client.Backoff = rateLimitBackoff
	rt.Client.HTTPClient.Timeout = 2 * time.Minute // per attempt
	rt.Client.HTTPClient.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		return &refusedError{"refusing a redirect from the DigitalOcean API to " + req.URL.Redacted()}
	}
	ot.Base = hostGuard{scheme: d.cfg.APIURL.Scheme, host: d.cfg.APIURL.Host, next: rt}
	d.client = c
	return c, nil
}

// hostGuard sends requests only to the API's own scheme and host; it also
// records the method in the request's context for checkRetry.
type hostGuard struct {
	scheme, host string
	next         http.RoundTripper
}

type methodKey struct{}

func (g hostGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != g.scheme || req.URL.Host != g.host {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, &refusedError{fmt.Sprintf("refusing to send the DigitalOcean token to %s://%s (api_url is %s://%s)", req.URL.Scheme, req.URL.Host, g.scheme, g.host)}
	}
	req = req.WithContext(context.WithValue(req.Context(), methodKey{}, req.Method))
	resp, err := g.next.RoundTrip(req)
	if err != nil && resp != nil {
		// A refused redirect comes back with the redirect's answer: keep
		// the error only (net/http would log about the pair).
		resp.Body.Close()
		resp = nil
	}
	return resp, err
}

// checkRetry: a 429 was not carried out, so it is always retried. A 5xx
// (but 501) or a failed connection is retried unless the request was a POST:
// a POST may have taken effect before its answer was lost, and the driver's
// callers look for what it would have made before sending it again.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	post := ctx.Value(methodKey{}) == http.MethodPost
	if err != nil {
		var refused *refusedError
		if errors.As(err, &refused) {
			return false, err
		}
		return !post || isDialError(err), nil
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return true, nil
	case resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
		return !post, nil
	}
	return false, nil
}

// isDialError reports a connection that was never made (nothing was sent).
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// refusedError is a request the driver would not send (another host, a
// redirect): never retried.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return e.msg }

// rateLimitBackoff waits, after a 429 or 503, as long as the answer says:
// Retry-After, else until RateLimit-Reset when RateLimit-Remaining is 0;
// otherwise it backs off exponentially with jitter. The wait stays within
// [min, max]: a reset further away than max is waited for in several
// retries, and when they run out the error says when the limit resets.
func rateLimitBackoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	return backoffAt(time.Now(), lo, hi, attempt, resp)
}

func backoffAt(now time.Time, lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	jitter := func(d time.Duration) time.Duration {
		return time.Duration(float64(d) * (1 + 0.1*rand.Float64())) // spread the clients of one account apart
	}
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if s := resp.Header.Get("Retry-After"); s != "" {
			if n, err := strconv.Atoi(s); err == nil && n >= 0 {
				return bound(time.Duration(n)*time.Second, lo, hi)
			}
			if t, err := http.ParseTime(s); err == nil {
				return bound(t.Sub(now), lo, hi)
			}
		}
		if resp.Header.Get("RateLimit-Remaining") == "0" {
			if n, err := strconv.ParseInt(resp.Header.Get("RateLimit-Reset"), 10, 64); err == nil {
				return bound(jitter(time.Unix(n, 0).Sub(now)), lo, hi)
			}
		}
	}
	return bound(jitter(lo<<min(attempt, 20)), lo, hi)
}

func bound(d, lo, hi time.Duration) time.Duration {
	return max(lo, min(d, hi))
}

// debugLogger keeps the retrying client's messages (one per request and per
// retry; errors are returned to the caller) at debug level.
type debugLogger struct{ l *slog.Logger }

func (l debugLogger) Error(msg string, kv ...any) { l.l.Debug("godo: "+msg, kv...) }
func (l debugLogger) Info(msg string, kv ...any)  { l.l.Debug("godo: "+msg, kv...) }
func (l debugLogger) Debug(msg string, kv ...any) { l.l.Debug("godo: "+msg, kv...) }
func (l debugLogger) Warn(msg string, kv ...any)  { l.l.Debug("godo: "+msg, kv...) }

// lockName serializes Create calls for one machine name (one generation's
// instance name, drivers.InstanceName) within this process;
// across processes the tag lookup before the create keeps Create idempotent.
func (d *Driver) lockName(cluster, name string) func() { return d.names.Lock(cluster, name) }

// baseName is the name of the cluster's VPC and firewall (and the SSH key's).
func (d *Driver) baseName(cluster string) string {
	if d.name == "digitalocean" {
		return "provision-" + cluster
	}
	return "provision-" + cluster + "-" + d.name
}

func keyName(cluster string) string { return "provision-" + cluster }

// tag renders one ownership tag as DigitalOcean takes it.
func tag(key, value string) string { return key + ":" + value }

func clusterTag(cluster string) string { return tag(drivers.TagCluster, cluster) }

// validTag reports whether DigitalOcean accepts s as a tag name.
func validTag(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == ':' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// hostKeyTag encodes an authorized_keys ed25519 key as a tag value.
func hostKeyTag(public string) (string, error) {
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(public))
	if err != nil {
		return "", fmt.Errorf("host key: %w", err)
	}
	if pk.Type() != ssh.KeyAlgoED25519 {
		return "", fmt.Errorf("host key is %s, want ssh-ed25519", pk.Type())
	}
	wire := pk.Marshal() // string "ssh-ed25519", string key
	return hex.EncodeToString(wire[len(wire)-32:]), nil
}

// hostKeyFromTag turns a tag value back into authorized_keys form.
func hostKeyFromTag(v string) string {
	b, err := hex.DecodeString(v)
	if err != nil || len(b) != 32 {
		return ""
	}
	pk, err := ssh.ParsePublicKey(append([]byte("\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"), b...))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk)))
}

// fingerprint is DigitalOcean's key fingerprint: MD5, colon-separated hex.
func fingerprint(publicKey string) (string, error) {
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(publicKey))
	if err != nil {
		return "", fmt.Errorf("admin public key: %w", err)
	}
	return ssh.FingerprintLegacyMD5(pk), nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error { return retry.Sleep(ctx, d) }
