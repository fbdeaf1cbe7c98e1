// Package dotest is an in-process DigitalOcean API for the digitalocean
// driver's tests and the acceptance suite: an httptest server on 127.0.0.1
// that keeps real state (droplets appear as "new", become "active" with
// addresses after a few polls, are listed by tag, disappear when deleted;
// VPCs, firewalls, SSH keys, tags and volumes likewise), checks what the real
// API checks where the driver relies on it (tag characters, the droplet
// limit, fingerprints, regions, sizes, images), sends rate-limit headers, and
// answers with injected faults (429, 5xx, an answer lost after the change was
// made). The provision binary does not import it.
//
// Addresses it hands out are documentation ranges (203.0.113.0/24 public,
// the VPC's range private): they are not hosts.
package dotest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/godo"
	"golang.org/x/crypto/ssh"
)

// Fault is an answer the server gives instead of the real one.
type Fault struct {
	Method string      // "" matches any
	Path   string      // prefix of the URL path ("/v2/droplets"); "" matches any
	Status int         // status to answer
	Header http.Header // added to the answer (e.g. RateLimit-Remaining: 0 with a 429)
	Times  int         // matching requests that get it (0 means 1)
	// After carries the request out first and then answers Status, or, with
	// Status 0, drops the connection without an answer: a change whose
	// answer was lost.
	After bool
}

// Server is the fake API. Its fields may be changed before the first request.
type Server struct {
	URL   string // http://127.0.0.1:PORT/
	Token string // the bearer token it accepts

	// ActivateAfter is how many GETs of a new droplet answer "new" before it
	// is "active" with its addresses (default 2).
	ActivateAfter int
	// MemberLinger is how many member listings still show a deleted
	// droplet in its VPC (default 1).
	MemberLinger int

	srv *httptest.Server

	mu        sync.Mutex
	account   godo.Account
	regions   []godo.Region
	sizes     []godo.Size
	images    []godo.Image
	droplets  map[int]*droplet
	volumes   map[string]*godo.Volume
	vpcs      map[string]*godo.VPC
	lingering map[string][]lingerMember // VPC ID -> deleted droplets still listed
	firewalls map[string]*godo.Firewall
	lbs       map[string]*godo.LoadBalancer // lb.go
	keys      map[int]*godo.Key
	tags      map[string]bool
	faults    []*Fault
	calls     []string // "METHOD /path"
	nextID    int
	remaining int
}

type droplet struct {
	godo.Droplet
	UserData string
	polls    int
	created  time.Time
}

type lingerMember struct {
	member godo.VPCMember
	left   int
}

// Start runs a server that accepts token.
func Start(token string) *Server {
	s := &Server{
		Token:         token,
		ActivateAfter: 2,
		MemberLinger:  1,
		account:       godo.Account{DropletLimit: 25, VolumeLimit: 100, Email: "test@example.org", UUID: "0f5e4b3c-0000-4000-8000-000000000001", Status: "active", EmailVerified: true},
		droplets:      map[int]*droplet{},
		volumes:       map[string]*godo.Volume{},
		vpcs:          map[string]*godo.VPC{},
		lingering:     map[string][]lingerMember{},
		firewalls:     map[string]*godo.Firewall{},
		lbs:           map[string]*godo.LoadBalancer{},
		keys:          map[int]*godo.Key{},
		tags:          map[string]bool{},
		nextID:        100000,
		remaining:     5000,
	}
	feats := []string{"backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"}
	all := []string{"ams3", "fra1", "nyc3"}
	s.regions = []godo.Region{
		{Slug: "ams3", Name: "Amsterdam 3", Available: true, Features: feats},
		{Slug: "fra1", Name: "Frankfurt 1", Available: true, Features: feats},
		{Slug: "nyc3", Name: "New York 3", Available: true, Features: feats},
		{Slug: "sfo1", Name: "San Francisco 1", Available: false, Features: feats},
	}
	s.sizes = []godo.Size{
		{Slug: "s-1vcpu-1gb", Memory: 1024, Vcpus: 1, Disk: 25, PriceMonthly: 6, Regions: all, Available: true},
		{Slug: "s-2vcpu-2gb", Memory: 2048, Vcpus: 2, Disk: 60, PriceMonthly: 18, Regions: all, Available: true},
		{Slug: "s-4vcpu-8gb", Memory: 8192, Vcpus: 4, Disk: 160, PriceMonthly: 48, Regions: []string{"ams3", "nyc3"}, Available: true},
		{Slug: "c-2", Memory: 4096, Vcpus: 2, Disk: 25, PriceMonthly: 42, Regions: all, Available: false},
	}
	s.images = []godo.Image{
		{ID: 150000001, Name: "12 x64", Distribution: "Debian", Slug: "debian-12-x64", Public: true, Regions: all, MinDiskSize: 15, Type: "base", Status: "available"},
		{ID: 150000002, Name: "24.04 (LTS) x64", Distribution: "Ubuntu", Slug: "ubuntu-24-04-x64", Public: true, Regions: all, MinDiskSize: 15, Type: "base", Status: "available"},
		{ID: 777, Name: "custom", Distribution: "Debian", Regions: []string{"fra1"}, MinDiskSize: 20, Type: "custom", Status: "available"},
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("dotest: listen on 127.0.0.1: %v", err))
	}
	s.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(s.serve)}}
	s.srv.Start()
	s.URL = s.srv.URL + "/"
	return s
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// SetDropletLimit changes the account's droplet limit.
func (s *Server) SetDropletLimit(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.account.DropletLimit = n
}

// Inject queues a fault; faults are matched in the order given.
func (s *Server) Inject(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.Times == 0 {
		f.Times = 1
	}
	s.faults = append(s.faults, &f)
}

// Calls counts the requests with that method (or any, for "") whose path
// starts with prefix.
func (s *Server) Calls(method, prefix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		m, p, _ := strings.Cut(c, " ")
		if (method == "" || m == method) && strings.HasPrefix(p, prefix) {
			n++
		}
	}
	return n
}

// Droplet is a droplet as the server holds it, with the user data it was
// given (which the API never returns).
type Droplet struct {
	godo.Droplet
	UserData string
}

// Droplets returns every droplet, by ID.
func (s *Server) Droplets() []Droplet {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Droplet
	for _, d := range s.droplets {
		out = append(out, Droplet{Droplet: d.Droplet, UserData: d.UserData})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SetStatus changes a droplet's status ("off", "active").
func (s *Server) SetStatus(id int, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.droplets[id]; ok {
		d.Status = status
	}
}

// Inventory lists everything the account holds, one line per resource
// ("droplet 100001 name", "vpc ID name", ...), sorted: what tests compare
// before and after a run.
func (s *Server) Inventory() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, d := range s.droplets {
		out = append(out, fmt.Sprintf("droplet %d %s", d.ID, d.Name))
	}
	for _, v := range s.volumes {
		out = append(out, fmt.Sprintf("volume %s %s", v.ID, v.Name))
	}
	for _, v := range s.vpcs {
		out = append(out, fmt.Sprintf("vpc %s %s", v.ID, v.Name))
	}
	for _, f := range s.firewalls {
		out = append(out, fmt.Sprintf("firewall %s %s", f.ID, f.Name))
	}
	for _, k := range s.keys {
		out = append(out, fmt.Sprintf("ssh-key %d %s", k.ID, k.Name))
	}
	for _, l := range s.lbs {
		out = append(out, fmt.Sprintf("load-balancer %s %s", l.ID, l.Name))
	}
	for t := range s.tags {
		out = append(out, "tag "+t)
	}
	sort.Strings(out)
	return out
}

// Firewalls, VPCs, Keys and Volumes return copies of what the server holds.
func (s *Server) Firewalls() []godo.Firewall {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []godo.Firewall
	for _, f := range s.firewalls {
		out = append(out, *f)
	}
	return out
}

func (s *Server) VPCs() []godo.VPC {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []godo.VPC
	for _, v := range s.vpcs {
		out = append(out, *v)
	}
	return out
}

func (s *Server) Keys() []godo.Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []godo.Key
	for _, k := range s.keys {
		out = append(out, *k)
	}
	return out
}

func (s *Server) Volumes() []godo.Volume {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []godo.Volume
	for _, v := range s.volumes {
		out = append(out, *v)
	}
	return out
}

// AddKey puts an SSH key in the account as the operator would have.
func (s *Server) AddKey(name, publicKey string) (godo.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, e := s.addKey(name, publicKey)
	if e != nil {
		return godo.Key{}, fmt.Errorf("%s", e.msg)
	}
	return *k, nil
}

// AddVPC makes a VPC as the operator would have.
func (s *Server) AddVPC(name, region, ipRange string) godo.VPC {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, e := s.addVPC(godo.VPCCreateRequest{Name: name, RegionSlug: region, IPRange: ipRange})
	if e != nil {
		panic(e.msg)
	}
	return *v
}

// apiErr is an error answer.
type apiErr struct {
	status int
	id     string
	msg    string
}

func errf(status int, id, format string, args ...any) *apiErr {
	return &apiErr{status, id, fmt.Sprintf(format, args...)}
}

var (
	tagRe    = regexp.MustCompile(`^[A-Za-z0-9:_-]{1,255}$`)
	volumeRe = regexp.MustCompile(`^[a-z][a-z0-9-]{0,63}$`)
	vpcRe    = regexp.MustCompile(`^[A-Za-z0-9.-]{1,255}$`)
)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.calls = append(s.calls, r.Method+" "+r.URL.Path)
	var fault *Fault
	for i, f := range s.faults {
		if (f.Method == "" || f.Method == r.Method) && strings.HasPrefix(r.URL.Path, f.Path) {
			fault = f
			if f.Times--; f.Times <= 0 {
				s.faults = slices.Delete(s.faults, i, i+1)
			}
			break
		}
	}
	s.remaining--
	if s.remaining < 0 {
		s.remaining = 0
	}
	w.Header().Set("RateLimit-Limit", "5000")
	w.Header().Set("RateLimit-Remaining", strconv.Itoa(s.remaining))
	w.Header().Set("RateLimit-Reset", strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10))
	s.mu.Unlock()

	if r.Header.Get("Authorization") != "Bearer "+s.Token {
		writeErr(w, errf(http.StatusUnauthorized, "Unauthorized", "Unable to authenticate you"))
		return
	}
	if fault != nil && !fault.After {
		for k, vs := range fault.Header {
			w.Header()[k] = vs
		}
		writeErr(w, errf(fault.Status, "injected", "injected fault %d", fault.Status))
		return
	}
	status, body, e := s.route(r)
	if fault != nil {
		if fault.Status == 0 {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
		}
		for k, vs := range fault.Header {
			w.Header()[k] = vs
		}
		writeErr(w, errf(fault.Status, "injected", "injected fault %d after the change was made", fault.Status))
		return
	}
	if e != nil {
		writeErr(w, e)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if body != nil {
		json.NewEncoder(w).Encode(body)
	}
}

func writeErr(w http.ResponseWriter, e *apiErr) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(map[string]string{"id": e.id, "message": e.msg, "request_id": "dotest"})
}

// route carries the request out under the lock.
func (s *Server) route(r *http.Request) (int, any, *apiErr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 2 || parts[0] != "v2" {
		return 0, nil, errf(404, "not_found", "no such path %s", r.URL.Path)
	}
	rest := parts[2:]
	decode := func(v any) *apiErr {
		if err := json.NewDecoder(r.Body).Decode(v); err != nil {
			return errf(400, "bad_request", "body: %v", err)
		}
		return nil
	}
	m := r.Method
	switch parts[1] {
	case "account":
		if len(rest) == 0 && m == "GET" {
			return 200, map[string]any{"account": s.account}, nil
		}
		if len(rest) >= 1 && rest[0] == "keys" {
			return s.routeKeys(m, rest[1:], r, decode)
		}
	case "regions":
		if m == "GET" {
			return page(r, "regions", s.regions)
		}
	case "sizes":
		if m == "GET" {
			return page(r, "sizes", s.sizes)
		}
	case "images":
		if m == "GET" && len(rest) == 1 {
			for _, im := range s.images {
				if im.Slug == rest[0] || strconv.Itoa(im.ID) == rest[0] {
					return 200, map[string]any{"image": im}, nil
				}
			}
			return 0, nil, errf(404, "not_found", "The resource you were accessing could not be found.")
		}
	case "droplets":
		return s.routeDroplets(m, rest, r, decode)
	case "tags":
		return s.routeTags(m, rest, decode)
	case "vpcs":
		return s.routeVPCs(m, rest, r, decode)
	case "firewalls":
		return s.routeFirewalls(m, rest, decode)
	case "volumes":
		return s.routeVolumes(m, rest, r, decode)
	case "load_balancers":
		return s.routeLBs(m, rest, r, decode)
	}
	return 0, nil, errf(404, "not_found", "no route for %s %s", m, r.URL.Path)
}

// page answers a list with DigitalOcean's links and meta.
func page[T any](r *http.Request, key string, items []T) (int, any, *apiErr) {
	p, _ := strconv.Atoi(r.URL.Query().Get("page"))
	per, _ := strconv.Atoi(r.URL.Query().Get("per_page"))
	if p < 1 {
		p = 1
	}
	if per < 1 {
		per = 20
	}
	per = min(per, 200)
	start := min((p-1)*per, len(items))
	end := min(start+per, len(items))
	pages := &godo.Pages{}
	link := func(n int) string {
		q := r.URL.Query()
		q.Set("page", strconv.Itoa(n))
		q.Set("per_page", strconv.Itoa(per))
		return "http://" + r.Host + r.URL.Path + "?" + q.Encode()
	}
	if p > 1 {
		pages.First, pages.Prev = link(1), link(p-1)
	}
	if end < len(items) {
		pages.Next, pages.Last = link(p+1), link((len(items)+per-1)/per)
	}
	out := items[start:end]
	if out == nil {
		out = []T{}
	}
	return 200, map[string]any{key: out, "links": godo.Links{Pages: pages}, "meta": godo.Meta{Total: len(items)}}, nil
}

func (s *Server) id() int {
	s.nextID++
	return s.nextID
}

func (s *Server) uuid() string {
	return fmt.Sprintf("5a4c0000-0000-4000-8000-%012d", s.id())
}

// Keys.

func (s *Server) addKey(name, public string) (*godo.Key, *apiErr) {
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(public))
	if err != nil {
		return nil, errf(422, "unprocessable_entity", "Key invalid, type not supported.")
	}
	fp := ssh.FingerprintLegacyMD5(pk)
	for _, k := range s.keys {
		if k.Fingerprint == fp {
			return nil, errf(422, "unprocessable_entity", "SSH Key is already in use on your account")
		}
	}
	if name == "" {
		return nil, errf(422, "unprocessable_entity", "Name is required")
	}
	k := &godo.Key{ID: s.id(), Name: name, Fingerprint: fp, PublicKey: strings.TrimSpace(public)}
	s.keys[k.ID] = k
	return k, nil
}

func (s *Server) findKey(idOrFP string) *godo.Key {
	for _, k := range s.keys {
		if strconv.Itoa(k.ID) == idOrFP || k.Fingerprint == idOrFP {
			return k
		}
	}
	return nil
}

func (s *Server) routeKeys(m string, rest []string, r *http.Request, decode func(any) *apiErr) (int, any, *apiErr) {
	switch {
	case len(rest) == 0 && m == "GET":
		return page(r, "ssh_keys", sortedValues(s.keys, func(k *godo.Key) string { return fmt.Sprintf("%012d", k.ID) }))
	case len(rest) == 0 && m == "POST":
		var req godo.KeyCreateRequest
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		k, e := s.addKey(req.Name, req.PublicKey)
		if e != nil {
			return 0, nil, e
		}
		return 201, map[string]any{"ssh_key": k}, nil
	case len(rest) == 1:
		k := s.findKey(rest[0])
		if k == nil {
			return 0, nil, errf(404, "not_found", "The resource you were accessing could not be found.")
		}
		switch m {
		case "GET":
			return 200, map[string]any{"ssh_key": k}, nil
		case "DELETE":
			delete(s.keys, k.ID)
			return 204, nil, nil
		}
	}
	return 0, nil, errf(404, "not_found", "no route")
}

func sortedValues[K comparable, V any](m map[K]V, key func(V) string) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out
}

// Tags.

func (s *Server) tagCount(name string) int {
	n := 0
	for _, d := range s.droplets {
		if slices.Contains(d.Tags, name) {
			n++
		}
	}
	for _, v := range s.volumes {
		if slices.Contains(v.Tags, name) {
			n++
		}
	}
	return n
}

func (s *Server) tagJSON(name string) godo.Tag {
	n := s.tagCount(name)
	return godo.Tag{Name: name, Resources: &godo.TaggedResources{Count: n}}
}

func (s *Server) routeTags(m string, rest []string, decode func(any) *apiErr) (int, any, *apiErr) {
	switch {
	case len(rest) == 0 && m == "POST":
		var req godo.TagCreateRequest
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		if !tagRe.MatchString(req.Name) {
			return 0, nil, errf(422, "unprocessable_entity", "tag name %q: only letters, numbers, colons, dashes and underscores", req.Name)
		}
		s.tags[req.Name] = true
		return 201, map[string]any{"tag": s.tagJSON(req.Name)}, nil
	case len(rest) == 1 && s.tags[rest[0]]:
		switch m {
		case "GET":
			return 200, map[string]any{"tag": s.tagJSON(rest[0])}, nil
		case "DELETE":
			delete(s.tags, rest[0])
			for _, d := range s.droplets {
				d.Tags = slices.DeleteFunc(d.Tags, func(t string) bool { return t == rest[0] })
			}
			for _, v := range s.volumes {
				v.Tags = slices.DeleteFunc(v.Tags, func(t string) bool { return t == rest[0] })
			}
			return 204, nil, nil
		}
	case len(rest) == 1:
		return 0, nil, errf(404, "not_found", "The resource you were accessing could not be found.")
	}
	return 0, nil, errf(404, "not_found", "no route")
}

func (s *Server) useTags(tags []string) *apiErr {
	for _, t := range tags {
		if !tagRe.MatchString(t) {
			return errf(422, "unprocessable_entity", "tag name %q: only letters, numbers, colons, dashes and underscores, at most 255", t)
		}
	}
	for _, t := range tags {
		s.tags[t] = true
	}
	return nil
}

// VPCs.

func (s *Server) addVPC(req godo.VPCCreateRequest) (*godo.VPC, *apiErr) {
	if !vpcRe.MatchString(req.Name) {
		return nil, errf(422, "unprocessable_entity", "name %q: only letters, numbers, dashes and periods", req.Name)
	}
	for _, v := range s.vpcs {
		if v.Name == req.Name {
			return nil, errf(409, "conflict", "a VPC with the name %q already exists", req.Name)
		}
	}
	if !s.regionOK(req.RegionSlug) {
		return nil, errf(422, "unprocessable_entity", "region %q is not available", req.RegionSlug)
	}
	rng := req.IPRange
	if rng == "" {
		rng = fmt.Sprintf("10.%d.0.0/20", 100+len(s.vpcs)%100)
	} else if p, err := netip.ParsePrefix(rng); err != nil || !p.Addr().IsPrivate() {
		return nil, errf(422, "unprocessable_entity", "ip_range %q is not a private range", rng)
	}
	v := &godo.VPC{ID: s.uuid(), Name: req.Name, Description: req.Description, RegionSlug: req.RegionSlug, IPRange: rng,
		URN: "do:vpc:", CreatedAt: time.Now().UTC()}
	v.URN += v.ID
	s.vpcs[v.ID] = v
	return v, nil
}

func (s *Server) members(id string) []godo.VPCMember {
	var out []godo.VPCMember
	for _, d := range s.droplets {
		if d.VPCUUID == id {
			out = append(out, godo.VPCMember{URN: fmt.Sprintf("do:droplet:%d", d.ID), Name: d.Name})
		}
	}
	var keep []lingerMember
	for _, l := range s.lingering[id] {
		out = append(out, l.member)
		if l.left--; l.left > 0 {
			keep = append(keep, l)
		}
	}
	s.lingering[id] = keep
	return out
}

func (s *Server) routeVPCs(m string, rest []string, r *http.Request, decode func(any) *apiErr) (int, any, *apiErr) {
	switch {
	case len(rest) == 0 && m == "GET":
		return page(r, "vpcs", sortedValues(s.vpcs, func(v *godo.VPC) string { return v.ID }))
	case len(rest) == 0 && m == "POST":
		var req godo.VPCCreateRequest
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		v, e := s.addVPC(req)
		if e != nil {
			return 0, nil, e
		}
		return 201, map[string]any{"vpc": v}, nil
	}
	if len(rest) == 0 {
		return 0, nil, errf(404, "not_found", "no route")
	}
	v, ok := s.vpcs[rest[0]]
	if !ok {
		return 0, nil, errf(404, "not_found", "The resource you were accessing could not be found.")
	}
	switch {
	case len(rest) == 1 && m == "GET":
		return 200, map[string]any{"vpc": v}, nil
	case len(rest) == 1 && m == "DELETE":
		if ms := s.members(v.ID); len(ms) > 0 {
			return 0, nil, errf(409, "conflict", "Cannot delete VPC with members")
		}
		delete(s.vpcs, v.ID)
		return 204, nil, nil
	case len(rest) == 2 && rest[1] == "members" && m == "GET":
		return page(r, "members", s.members(v.ID))
	}
	return 0, nil, errf(404, "not_found", "no route")
}

// Firewalls.

func (s *Server) checkFirewall(req *godo.FirewallRequest) *apiErr {
	if req.Name == "" {
		return errf(422, "unprocessable_entity", "name is required")
	}
	if len(req.InboundRules)+len(req.OutboundRules) == 0 {
		return errf(422, "unprocessable_entity", "at least one rule is required")
	}
	if len(req.InboundRules)+len(req.OutboundRules) > 50 {
		return errf(422, "unprocessable_entity", "at most 50 rules")
	}
	if len(req.Tags) > 5 {
		return errf(422, "unprocessable_entity", "at most 5 tags")
	}
	for _, t := range req.Tags {
		if !s.tags[t] {
			return errf(422, "unprocessable_entity", "tag %q not found", t)
		}
	}
	check := func(proto, ports string, addrs, tags, lbs []string) *apiErr {
		switch proto {
		case "tcp", "udp":
			if ports == "" {
				return errf(422, "unprocessable_entity", "%s rules need ports", proto)
			}
		case "icmp":
		default:
			return errf(422, "unprocessable_entity", "protocol %q: tcp, udp or icmp", proto)
		}
		if len(addrs)+len(tags)+len(lbs) == 0 {
			return errf(422, "unprocessable_entity", "a rule needs sources or destinations")
		}
		for _, id := range lbs {
			if _, ok := s.lbs[id]; !ok {
				return errf(422, "unprocessable_entity", "load balancer %s not found", id)
			}
		}
		for _, a := range addrs {
			if _, err := netip.ParsePrefix(a); err != nil {
				if _, err := netip.ParseAddr(a); err != nil {
					return errf(422, "unprocessable_entity", "address %q", a)
				}
			}
		}
		for _, t := range tags {
			if !s.tags[t] {
				return errf(422, "unprocessable_entity", "tag %q not found", t)
			}
		}
		return nil
	}
	for _, r := range req.InboundRules {
		if r.Sources == nil {
			return errf(422, "unprocessable_entity", "inbound rule without sources")
		}
		if e := check(r.Protocol, r.PortRange, r.Sources.Addresses, r.Sources.Tags, r.Sources.LoadBalancerUIDs); e != nil {
			return e
		}
	}
	for _, r := range req.OutboundRules {
		if r.Destinations == nil {
			return errf(422, "unprocessable_entity", "outbound rule without destinations")
		}
		if e := check(r.Protocol, r.PortRange, r.Destinations.Addresses, r.Destinations.Tags, r.Destinations.LoadBalancerUIDs); e != nil {
			return e
		}
	}
	return nil
}

func (s *Server) routeFirewalls(m string, rest []string, decode func(any) *apiErr) (int, any, *apiErr) {
	switch {
	case len(rest) == 0 && m == "GET":
		fws := sortedValues(s.firewalls, func(f *godo.Firewall) string { return f.ID })
		out := make([]godo.Firewall, len(fws))
		for i, f := range fws {
			out[i] = *f
		}
		return 200, map[string]any{"firewalls": out, "links": godo.Links{}, "meta": godo.Meta{Total: len(out)}}, nil
	case len(rest) == 0 && m == "POST":
		var req godo.FirewallRequest
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		if e := s.checkFirewall(&req); e != nil {
			return 0, nil, e
		}
		f := &godo.Firewall{ID: s.uuid(), Name: req.Name, Status: "succeeded", InboundRules: req.InboundRules, OutboundRules: req.OutboundRules,
			DropletIDs: req.DropletIDs, Tags: req.Tags, Created: time.Now().UTC().Format(time.RFC3339)}
		s.firewalls[f.ID] = f
		return 202, map[string]any{"firewall": f}, nil
	}
	if len(rest) != 1 {
		return 0, nil, errf(404, "not_found", "no route")
	}
	f, ok := s.firewalls[rest[0]]
	if !ok {
		return 0, nil, errf(404, "not_found", "The resource you were accessing could not be found.")
	}
	switch m {
	case "GET":
		return 200, map[string]any{"firewall": f}, nil
	case "PUT":
		var req godo.FirewallRequest
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		if e := s.checkFirewall(&req); e != nil {
			return 0, nil, e
		}
		f.Name, f.InboundRules, f.OutboundRules, f.DropletIDs, f.Tags = req.Name, req.InboundRules, req.OutboundRules, req.DropletIDs, req.Tags
		return 200, map[string]any{"firewall": f}, nil
	case "DELETE":
		delete(s.firewalls, f.ID)
		return 204, nil, nil
	}
	return 0, nil, errf(404, "not_found", "no route")
}

// Volumes.

func (s *Server) routeVolumes(m string, rest []string, r *http.Request, decode func(any) *apiErr) (int, any, *apiErr) {
	switch {
	case len(rest) == 0 && m == "GET":
		var out []godo.Volume
		for _, v := range sortedValues(s.volumes, func(v *godo.Volume) string { return v.ID }) {
			if reg := r.URL.Query().Get("region"); reg != "" && v.Region.Slug != reg {
				continue
			}
			if n := r.URL.Query().Get("name"); n != "" && v.Name != n {
				continue
			}
			out = append(out, *v)
		}
		return page(r, "volumes", out)
	case len(rest) == 0 && m == "POST":
		var req godo.VolumeCreateRequest
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		if !volumeRe.MatchString(req.Name) {
			return 0, nil, errf(422, "unprocessable_entity", "volume name %q: lowercase letters, numbers and dashes, starting with a letter, at most 64", req.Name)
		}
		if !s.regionOK(req.Region) {
			return 0, nil, errf(422, "unprocessable_entity", "region %q is not available", req.Region)
		}
		if req.SizeGigaBytes < 1 || req.SizeGigaBytes > 16384 {
			return 0, nil, errf(422, "unprocessable_entity", "size_gigabytes %d: 1 to 16384", req.SizeGigaBytes)
		}
		for _, v := range s.volumes {
			if v.Name == req.Name && v.Region.Slug == req.Region {
				return 0, nil, errf(409, "conflict", "a volume named %q exists in %s", req.Name, req.Region)
			}
		}
		if e := s.useTags(req.Tags); e != nil {
			return 0, nil, e
		}
		v := &godo.Volume{ID: s.uuid(), Region: &godo.Region{Slug: req.Region}, Name: req.Name, SizeGigaBytes: req.SizeGigaBytes,
			Description: req.Description, DropletIDs: []int{}, CreatedAt: time.Now().UTC(), FilesystemType: req.FilesystemType,
			FilesystemLabel: req.FilesystemLabel, Tags: req.Tags}
		s.volumes[v.ID] = v
		return 201, map[string]any{"volume": v}, nil
	case len(rest) == 1:
		v, ok := s.volumes[rest[0]]
		if !ok {
			return 0, nil, errf(404, "not_found", "The resource you were accessing could not be found.")
		}
		switch m {
		case "GET":
			return 200, map[string]any{"volume": v}, nil
		case "DELETE":
			if len(v.DropletIDs) > 0 {
				return 0, nil, errf(409, "conflict", "volume is attached to droplet %v", v.DropletIDs)
			}
			delete(s.volumes, v.ID)
			return 204, nil, nil
		}
	}
	return 0, nil, errf(404, "not_found", "no route")
}

// Droplets.

func (s *Server) regionOK(slug string) bool {
	for _, r := range s.regions {
		if r.Slug == slug {
			return r.Available
		}
	}
	return false
}

type createReq struct {
	Name       string            `json:"name"`
	Region     string            `json:"region"`
	Size       string            `json:"size"`
	Image      json.RawMessage   `json:"image"`
	SSHKeys    []json.RawMessage `json:"ssh_keys"`
	IPv6       bool              `json:"ipv6"`
	Monitoring bool              `json:"monitoring"`
	UserData   string            `json:"user_data"`
	Volumes    []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	} `json:"volumes"`
	Tags    []string `json:"tags"`
	VPCUUID string   `json:"vpc_uuid"`
}

func (s *Server) createDroplet(req createReq) (*droplet, *apiErr) {
	if req.Name == "" {
		return nil, errf(422, "unprocessable_entity", "name is required")
	}
	if !s.regionOK(req.Region) {
		return nil, errf(422, "unprocessable_entity", "region %q is not available", req.Region)
	}
	var size *godo.Size
	for i := range s.sizes {
		if s.sizes[i].Slug == req.Size && s.sizes[i].Available && slices.Contains(s.sizes[i].Regions, req.Region) {
			size = &s.sizes[i]
		}
	}
	if size == nil {
		return nil, errf(422, "unprocessable_entity", "size %q is not available in %s", req.Size, req.Region)
	}
	var image *godo.Image
	imgKey := strings.Trim(string(req.Image), `"`)
	for i := range s.images {
		if s.images[i].Slug == imgKey || strconv.Itoa(s.images[i].ID) == imgKey {
			image = &s.images[i]
		}
	}
	if image == nil || !slices.Contains(image.Regions, req.Region) {
		return nil, errf(422, "unprocessable_entity", "image %s is not available in %s", imgKey, req.Region)
	}
	for _, k := range req.SSHKeys {
		if s.findKey(strings.Trim(string(k), `"`)) == nil {
			return nil, errf(422, "unprocessable_entity", "ssh key %s not found", k)
		}
	}
	if len(req.UserData) > 64*1024 {
		return nil, errf(422, "unprocessable_entity", "user_data is larger than 64 KiB")
	}
	vpc := req.VPCUUID
	if vpc != "" {
		v, ok := s.vpcs[vpc]
		if !ok || v.RegionSlug != req.Region {
			return nil, errf(422, "unprocessable_entity", "vpc %s not found in %s", vpc, req.Region)
		}
	}
	var vols []*godo.Volume
	for _, rv := range req.Volumes {
		v, ok := s.volumes[rv.ID]
		if !ok || v.Region.Slug != req.Region || len(v.DropletIDs) > 0 {
			return nil, errf(422, "unprocessable_entity", "volume %s cannot be attached", rv.ID)
		}
		vols = append(vols, v)
	}
	if len(s.droplets) >= s.account.DropletLimit {
		return nil, errf(422, "unprocessable_entity", "creating this/these droplet(s) will exceed your droplet limit")
	}
	if e := s.useTags(req.Tags); e != nil {
		return nil, e
	}
	now := time.Now().UTC()
	d := &droplet{Droplet: godo.Droplet{ID: s.id(), Name: req.Name, Memory: size.Memory, Vcpus: size.Vcpus, Disk: size.Disk,
		Region: &godo.Region{Slug: req.Region}, Image: image, Size: size, SizeSlug: size.Slug, Status: "new",
		Networks: &godo.Networks{}, Created: now.Format(time.RFC3339), Tags: slices.Clone(req.Tags), VolumeIDs: []string{}, VPCUUID: vpc},
		UserData: req.UserData, created: now}
	for _, v := range vols {
		v.DropletIDs = []int{d.ID}
		d.VolumeIDs = append(d.VolumeIDs, v.ID)
	}
	s.droplets[d.ID] = d
	return d, nil
}

// activate gives a droplet its addresses and makes it active.
func (s *Server) activate(d *droplet) {
	n := d.ID % 250
	d.Networks.V4 = []godo.NetworkV4{{IPAddress: fmt.Sprintf("203.0.113.%d", n+1), Netmask: "255.255.255.0", Gateway: "203.0.113.254", Type: "public"}}
	if v, ok := s.vpcs[d.VPCUUID]; ok {
		if p, err := netip.ParsePrefix(v.IPRange); err == nil {
			a := p.Addr().As4()
			a[2] += byte(n / 250)
			a[3] = byte(n + 2)
			d.Networks.V4 = append(d.Networks.V4, godo.NetworkV4{IPAddress: netip.AddrFrom4(a).String(), Netmask: "255.255.240.0", Type: "private"})
		}
	}
	d.Status = "active"
}

func (s *Server) routeDroplets(m string, rest []string, r *http.Request, decode func(any) *apiErr) (int, any, *apiErr) {
	switch {
	case len(rest) == 0 && m == "GET":
		tag := r.URL.Query().Get("tag_name")
		var out []godo.Droplet
		for _, d := range sortedValues(s.droplets, func(d *droplet) string { return fmt.Sprintf("%012d", d.ID) }) {
			if tag == "" || slices.Contains(d.Tags, tag) {
				out = append(out, d.Droplet)
			}
		}
		return page(r, "droplets", out)
	case len(rest) == 0 && m == "POST":
		var req createReq
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		d, e := s.createDroplet(req)
		if e != nil {
			return 0, nil, e
		}
		return 202, map[string]any{"droplet": d.Droplet}, nil
	}
	if len(rest) == 0 {
		return 0, nil, errf(404, "not_found", "no route")
	}
	id, _ := strconv.Atoi(rest[0])
	d, ok := s.droplets[id]
	if !ok {
		return 0, nil, errf(404, "not_found", "The resource you were accessing could not be found.")
	}
	switch {
	case len(rest) == 1 && m == "GET":
		if d.Status == "new" {
			if d.polls++; d.polls >= s.ActivateAfter {
				s.activate(d)
			}
		}
		return 200, map[string]any{"droplet": d.Droplet}, nil
	case len(rest) == 1 && m == "DELETE":
		delete(s.droplets, id)
		for _, v := range s.volumes {
			v.DropletIDs = slices.DeleteFunc(v.DropletIDs, func(x int) bool { return x == id })
		}
		if d.VPCUUID != "" && s.MemberLinger > 0 {
			s.lingering[d.VPCUUID] = append(s.lingering[d.VPCUUID], lingerMember{godo.VPCMember{URN: fmt.Sprintf("do:droplet:%d", id), Name: d.Name}, s.MemberLinger})
		}
		return 204, nil, nil
	case len(rest) == 2 && rest[1] == "actions" && m == "POST":
		var req struct {
			Type string `json:"type"`
		}
		if e := decode(&req); e != nil {
			return 0, nil, e
		}
		switch req.Type {
		case "power_on":
			if d.Status == "off" {
				d.Status = "active"
			}
		case "power_off", "shutdown":
			d.Status = "off"
		default:
			return 0, nil, errf(422, "unprocessable_entity", "action %q not supported here", req.Type)
		}
		return 201, map[string]any{"action": godo.Action{ID: s.id(), Status: "completed", Type: req.Type, ResourceID: id, ResourceType: "droplet"}}, nil
	}
	return 0, nil, errf(404, "not_found", "no route")
}
