package azuretest

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// Credentials the HTTPS server's token endpoint accepts (client-secret
// flow), and the token it hands out and requires on every Resource Manager
// request.
const (
	TenantID     = "00000000-0000-0000-0000-0000000000a1"
	ClientID     = "00000000-0000-0000-0000-0000000000c1"
	ClientSecret = "azuretest-client-secret"
	accessToken  = "azuretest-access-token"
)

// Server is the backend served over HTTPS on 127.0.0.1.
type Server struct {
	*httptest.Server
	CertFile string // the server's certificate, PEM: point SSL_CERT_FILE at it

	mu     sync.Mutex
	tokens int
}

// Tokens is how many access tokens the token endpoint issued.
func (s *Server) Tokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens
}

// Serve starts an HTTPS server on 127.0.0.1 for the backend, writing its
// certificate to dir/azuretest-ca.pem. The provision binary reaches it with
// cloud = "custom", resource_manager_endpoint = authority_host = s.URL, and
// the environment of Env.
func (b *Backend) Serve(dir string) (*Server, error) {
	s := &Server{}
	h := &handler{b: b, srv: s, pending: map[string]string{}}
	s.Server = httptest.NewTLSServer(h)
	s.CertFile = filepath.Join(dir, "azuretest-ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
	if err := os.WriteFile(s.CertFile, pemBytes, 0o644); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Env is the environment under which azidentity's default chain finds the
// server's client-secret credential (EnvironmentCredential) and Go trusts
// its certificate.
func (s *Server) Env(subscription string) []string {
	return []string{
		"AZURE_TENANT_ID=" + TenantID,
		"AZURE_CLIENT_ID=" + ClientID,
		"AZURE_CLIENT_SECRET=" + ClientSecret,
		// The operator confirms the custom cloud's login endpoint the
		// spec names (authority_host) before the secret goes there.
		"AZURE_AUTHORITY_HOST=" + s.URL + "/",
		"AZURE_SUBSCRIPTION_ID=" + subscription,
		"SSL_CERT_FILE=" + s.CertFile,
	}
}

type handler struct {
	b   *Backend
	srv *Server

	mu      sync.Mutex
	pending map[string]string // path of a running LRO -> its API name
}

type route struct {
	re      *regexp.Regexp
	methods map[string]string // HTTP method -> API name
}

const (
	sub = `^/subscriptions/[^/]+`
	grp = sub + `/resourcegroups/[^/]+`
	cmp = grp + `/providers/microsoft\.compute`
	nwk = grp + `/providers/microsoft\.network`
)

// routes maps the Resource Manager paths the driver uses to the SDK's API
// names, which the fake servers dispatch on (in process the SDK client puts
// the name into the request's context; over HTTP it is recovered here).
var routes = []route{
	{regexp.MustCompile(grp + `$`), map[string]string{"PUT": "ResourceGroupsClient.CreateOrUpdate", "GET": "ResourceGroupsClient.Get", "DELETE": "ResourceGroupsClient.BeginDelete"}},
	{regexp.MustCompile(grp + `/resources$`), map[string]string{"GET": "Client.NewListByResourceGroupPager"}},
	{regexp.MustCompile(cmp + `/virtualmachines$`), map[string]string{"GET": "VirtualMachinesClient.NewListPager"}},
	{regexp.MustCompile(sub + `/providers/microsoft\.compute/virtualmachines$`), map[string]string{"GET": "VirtualMachinesClient.NewListAllPager"}},
	{regexp.MustCompile(cmp + `/virtualmachines/[^/]+$`), map[string]string{"PUT": "VirtualMachinesClient.BeginCreateOrUpdate", "GET": "VirtualMachinesClient.Get", "DELETE": "VirtualMachinesClient.BeginDelete"}},
	{regexp.MustCompile(cmp + `/virtualmachines/[^/]+/start$`), map[string]string{"POST": "VirtualMachinesClient.BeginStart"}},
	{regexp.MustCompile(cmp + `/disks$`), map[string]string{"GET": "DisksClient.NewListByResourceGroupPager"}},
	{regexp.MustCompile(cmp + `/disks/[^/]+$`), map[string]string{"GET": "DisksClient.Get", "PATCH": "DisksClient.BeginUpdate", "DELETE": "DisksClient.BeginDelete"}},
	{regexp.MustCompile(sub + `/providers/microsoft\.compute/skus$`), map[string]string{"GET": "ResourceSKUsClient.NewListPager"}},
	{regexp.MustCompile(sub + `/providers/microsoft\.compute/locations/[^/]+/usages$`), map[string]string{"GET": "UsageClient.NewListPager"}},
	{regexp.MustCompile(sub + `/providers/microsoft\.compute/locations/[^/]+/publishers/[^/]+/artifacttypes/vmimage/offers/[^/]+/skus/[^/]+/versions$`), map[string]string{"GET": "VirtualMachineImagesClient.List"}},
	{regexp.MustCompile(sub + `/providers/microsoft\.compute/locations/[^/]+/publishers/[^/]+/artifacttypes/vmimage/offers/[^/]+/skus/[^/]+/versions/[^/]+$`), map[string]string{"GET": "VirtualMachineImagesClient.Get"}},
	{regexp.MustCompile(nwk + `/virtualnetworks/[^/]+$`), map[string]string{"PUT": "VirtualNetworksClient.BeginCreateOrUpdate", "GET": "VirtualNetworksClient.Get", "DELETE": "VirtualNetworksClient.BeginDelete"}},
	{regexp.MustCompile(nwk + `/networksecuritygroups/[^/]+$`), map[string]string{"PUT": "SecurityGroupsClient.BeginCreateOrUpdate", "GET": "SecurityGroupsClient.Get", "DELETE": "SecurityGroupsClient.BeginDelete"}},
	{regexp.MustCompile(nwk + `/publicipaddresses$`), map[string]string{"GET": "PublicIPAddressesClient.NewListPager"}},
	{regexp.MustCompile(nwk + `/publicipaddresses/[^/]+$`), map[string]string{"PUT": "PublicIPAddressesClient.BeginCreateOrUpdate", "GET": "PublicIPAddressesClient.Get", "DELETE": "PublicIPAddressesClient.BeginDelete"}},
	{regexp.MustCompile(nwk + `/networkinterfaces$`), map[string]string{"GET": "InterfacesClient.NewListPager"}},
	{regexp.MustCompile(nwk + `/networkinterfaces/[^/]+$`), map[string]string{"PUT": "InterfacesClient.BeginCreateOrUpdate", "GET": "InterfacesClient.Get", "DELETE": "InterfacesClient.BeginDelete"}},
	{regexp.MustCompile(nwk + `/loadbalancers/[^/]+$`), map[string]string{"PUT": "LoadBalancersClient.BeginCreateOrUpdate", "GET": "LoadBalancersClient.Get", "DELETE": "LoadBalancersClient.BeginDelete"}},
}

// fakePollSuffix is what the SDK's fake poller appends to an operation's
// path to poll it.
const fakePollSuffix = "/get/fake/status"

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.ToLower(r.URL.Path)
	switch {
	case strings.HasSuffix(path, "/v2.0/.well-known/openid-configuration"):
		h.openID(w, r)
		return
	case strings.HasSuffix(path, "/oauth2/v2.0/token"):
		h.token(w, r)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+accessToken {
		writeError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "no or wrong bearer token")
		return
	}
	var api string
	if strings.HasPrefix(r.URL.Path, operationsPath) {
		api = "azuretest.Operation"
	} else if base, ok := strings.CutSuffix(r.URL.Path, fakePollSuffix); ok && r.Method == http.MethodGet {
		h.mu.Lock()
		api = h.pending[strings.ToLower(base)]
		h.mu.Unlock()
	} else {
		for _, rt := range routes {
			if rt.re.MatchString(path) {
				api = rt.methods[r.Method]
				break
			}
		}
		if strings.Contains(api, ".Begin") {
			h.mu.Lock()
			h.pending[path] = api
			h.mu.Unlock()
		}
	}
	if api == "" {
		writeError(w, http.StatusNotImplemented, "NotImplemented", "azuretest does not serve "+r.Method+" "+r.URL.Path)
		return
	}
	req := r.Clone(context.WithValue(r.Context(), runtime.CtxAPINameKey{}, api))
	req.RequestURI = ""
	req.URL.Scheme, req.URL.Host = "https", r.Host
	resp, err := h.b.Transport().Do(req)
	if err != nil {
		var re *azcore.ResponseError
		if errors.As(err, &re) {
			writeError(w, re.StatusCode, re.ErrorCode, api+": "+re.ErrorCode)
			return
		}
		writeError(w, http.StatusNotImplemented, "NotImplemented", err.Error())
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	if st := resp.Header.Get("Fake-Poller-Status"); st == "InProgress" || resp.Header.Get("Azure-AsyncOperation") != "" {
		// Poll again soon (the SDK honours it over its own frequency).
		w.Header().Set("Retry-After-Ms", "50")
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("x-ms-error-code", code)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// openID is the tenant's OpenID configuration, as Microsoft Entra ID
// serves it (the parts MSAL reads).
func (h *handler) openID(w http.ResponseWriter, r *http.Request) {
	tenant := strings.Split(strings.Trim(r.URL.Path, "/"), "/")[0]
	base := "https://" + r.Host + "/" + tenant
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{
		"token_endpoint":         base + "/oauth2/v2.0/token",
		"authorization_endpoint": base + "/oauth2/v2.0/authorize",
		"issuer":                 base + "/v2.0",
	})
}

// token issues the access token for the client-secret credential, and
// refuses any other client or secret.
func (h *handler) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.PostForm.Get("client_id") != ClientID || r.PostForm.Get("client_secret") != ClientSecret || r.PostForm.Get("grant_type") != "client_credentials" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client", "error_description": "azuretest: unknown client or secret"})
		return
	}
	h.srv.mu.Lock()
	h.srv.tokens++
	h.srv.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":3600,"ext_expires_in":3600,"access_token":%q}`, accessToken)
}
