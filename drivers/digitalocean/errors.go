package digitalocean

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/digitalocean/godo"
)

// status returns the HTTP status of an API error (0 when err is not one).
func status(err error) int {
	var er *godo.ErrorResponse
	if errors.As(err, &er) && er.Response != nil {
		return er.Response.StatusCode
	}
	return 0
}

func isNotFound(err error) bool { return status(err) == http.StatusNotFound }

// ambiguous reports an error after which a POST may or may not have taken
// effect: a server error or a connection lost after the request was sent.
// The caller looks for what it asked for before asking again.
func ambiguous(err error) bool {
	if err == nil {
		return false
	}
	if s := status(err); s != 0 {
		return s >= 500 && s != http.StatusNotImplemented
	}
	var refused *refusedError
	return !errors.As(err, &refused) && !isDialError(err)
}

// explain turns the errors users meet into a message that says what to do.
// The original error stays wrapped (errors.As still finds the API error);
// godo's messages carry the method, URL, status and request ID, never the
// token.
func (d *Driver) explain(err error) error {
	if err == nil {
		return nil
	}
	var er *godo.ErrorResponse
	if errors.As(err, &er) && er.Response != nil {
		msg := strings.ToLower(er.Message)
		switch s := er.Response.StatusCode; {
		case s == http.StatusUnauthorized:
			return fmt.Errorf("DigitalOcean refused the token (mistyped, expired or revoked: make a token with read and write scope under API > Tokens): %w", err)
		case s == http.StatusForbidden && !strings.Contains(msg, "member"):
			return fmt.Errorf("the DigitalOcean token lacks a permission this needs (a read-only token, or a custom-scoped token without droplet, vpc, firewall, ssh_key, block_storage or tag access): %w", err)
		case s == http.StatusTooManyRequests:
			when := ""
			if n, perr := strconv.ParseInt(er.Response.Header.Get("RateLimit-Reset"), 10, 64); perr == nil && n > 0 {
				when = " (it resets at " + time.Unix(n, 0).UTC().Format("15:04:05 UTC") + ")"
			}
			return fmt.Errorf("DigitalOcean's API rate limit stayed exhausted through the retries%s: lower parallelism in the spec, or run again later: %w", when, err)
		case s == http.StatusUnprocessableEntity && (strings.Contains(msg, "droplet limit") || strings.Contains(msg, "exceed")):
			return fmt.Errorf("DigitalOcean account limit reached (raise the droplet or volume limit in the account settings, or remove resources): %w", err)
		case s >= 500:
			return fmt.Errorf("DigitalOcean's API kept failing (retried; run the command again later, nothing is made twice): %w", err)
		}
		return err
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return fmt.Errorf("cannot resolve the DigitalOcean API host %s (is the network up?): %w", d.cfg.APIURL.Host, err)
	}
	return err
}
