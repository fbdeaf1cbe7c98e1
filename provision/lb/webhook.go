package lb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/docker/docker/api/types/swarm"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/provision/redact"
)

// Webhook is a drivers.Balancer for load balancers provision does not make
// (an appliance, HAProxy or keepalived on premises, a cloud not driven by
// provision): every sync POSTs the published ports and the swarm's nodes as
// JSON to URL, Balancer GETs the same URL, RemoveBalancer sends DELETE.
//
// Request (POST):
//
//	{"cluster": "<id>", "ports": [{"port": 80, "protocol": "tcp", "sources": ["0.0.0.0/0"], "services": ["web"]}],
//	 "nodes": [{"name": "demo-manager-1", "address": "10.0.0.5", "role": "manager", "ready": true}]}
//
// Answer: any 2xx; a JSON body in the shape of drivers.LBStatus (address,
// ports, targets, changes) is passed on to status and plan, an empty one
// means "done as asked". GET answers 404 when nothing exists. The token, when
// set, goes in "Authorization: Bearer ..." and nowhere else.
type Webhook struct {
	URL    string
	Token  redact.Secret
	Client *http.Client // default: 30 s timeout, no redirects
	// Engine, when set, is asked for the swarm's nodes (the backends).
	Engine Engine
}

var _ drivers.Balancer = (*Webhook)(nil)

// WebhookNode is a swarm node as the webhook is told of it.
type WebhookNode struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Role    string `json:"role"`
	Ready   bool   `json:"ready"`
}

// WebhookRequest is the body of the webhook's POST.
type WebhookRequest struct {
	Cluster string                  `json:"cluster"`
	Ports   []drivers.PublishedPort `json:"ports"`
	Nodes   []WebhookNode           `json:"nodes"`
}

func (w *Webhook) client() *http.Client {
	if w.Client != nil {
		return w.Client
	}
	return &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return errors.New("the webhook answered with a redirect: give its final URL")
	}}
}

// SyncPorts POSTs the ports and nodes.
func (w *Webhook) SyncPorts(ctx context.Context, cluster string, ports []drivers.PublishedPort) (drivers.LBStatus, error) {
	req := WebhookRequest{Cluster: cluster, Ports: ports, Nodes: []WebhookNode{}}
	if req.Ports == nil {
		req.Ports = []drivers.PublishedPort{}
	}
	if w.Engine != nil {
		ns, err := w.Engine.NodeList(ctx, swarm.NodeListOptions{})
		if err != nil {
			return drivers.LBStatus{}, fmt.Errorf("list nodes: %w", err)
		}
		for _, n := range ns {
			req.Nodes = append(req.Nodes, WebhookNode{Name: n.Description.Hostname, Address: n.Status.Addr, Role: string(n.Spec.Role),
				Ready: n.Status.State == swarm.NodeStateReady && n.Spec.Availability == swarm.NodeAvailabilityActive})
		}
		slices.SortFunc(req.Nodes, func(a, b WebhookNode) int {
			if a.Name < b.Name {
				return -1
			}
			if a.Name > b.Name {
				return 1
			}
			return 0
		})
	}
	body, err := json.Marshal(req)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	st, found, err := w.do(ctx, http.MethodPost, body)
	if err != nil {
		return drivers.LBStatus{}, err
	}
	if !found {
		return drivers.LBStatus{}, fmt.Errorf("POST %s: 404 Not Found", w.URL)
	}
	// An empty answer means "done as asked".
	if st.Ports == nil {
		st.Ports = drivers.Ports(ports)
	}
	if st.Targets == 0 {
		for _, n := range req.Nodes {
			if n.Ready {
				st.Targets++
			}
		}
	}
	st.Exists = true
	if st.Name == "" {
		st.Name = "webhook"
	}
	return st, nil
}

// Balancer GETs the webhook's view.
func (w *Webhook) Balancer(ctx context.Context, cluster string) (drivers.LBStatus, error) {
	st, found, err := w.do(ctx, http.MethodGet, nil)
	if err != nil || !found {
		return drivers.LBStatus{}, err
	}
	st.Exists = true
	if st.Name == "" {
		st.Name = "webhook"
	}
	return st, nil
}

// RemoveBalancer sends DELETE; 404 is success.
func (w *Webhook) RemoveBalancer(ctx context.Context, cluster string) error {
	_, _, err := w.do(ctx, http.MethodDelete, nil)
	return err
}

// do sends one request; found is false on 404.
func (w *Webhook) do(ctx context.Context, method string, body []byte) (st drivers.LBStatus, found bool, err error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, w.URL, rd)
	if err != nil {
		return st, false, fmt.Errorf("webhook: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if len(w.Token) > 0 {
		req.Header.Set("Authorization", "Bearer "+string(w.Token))
	}
	resp, err := w.client().Do(req)
	if err != nil {
		// The URL has no credentials (the spec refuses them) and the token
		// is only in a header: the error is safe to show.
		return st, false, fmt.Errorf("webhook: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return st, false, nil
	case resp.StatusCode/100 != 2:
		msg := string(bytes.TrimSpace(b))
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		return st, false, fmt.Errorf("%s %s: %s: %s", method, w.URL, resp.Status, redact.String(msg, string(w.Token)))
	}
	if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &st); err != nil {
			return st, true, fmt.Errorf("%s %s: the answer is not JSON in the shape of a load balancer status: %w", method, w.URL, err)
		}
	}
	return st, true, nil
}
