package azuretest

import (
	"context"
	"net/http"
	"strings"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v6"
)

// ---- load balancers
//
// Kept as Azure keeps them: the frontend's public IP is marked in use (it
// cannot be deleted while the balancer holds it), sub-resources get IDs
// under the balancer's, references between them (rule -> frontend, pool,
// probe) must resolve, a backend pool lists the NIC IP configurations that
// name it (BackendIPConfigurations, as Azure computes it), and a balancer
// whose pool a NIC still names cannot be deleted.

func (b *Backend) lbCreate(ctx context.Context, rg, name string, p armnetwork.LoadBalancer, _ *armnetwork.LoadBalancersClientBeginCreateOrUpdateOptions) (resp azfake.PollerResponder[armnetwork.LoadBalancersClientCreateOrUpdateResponse], e azfake.ErrorResponder) {
	if f := b.fault("LoadBalancersClient.BeginCreateOrUpdate", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.groupMissing(rg) {
		return resp, notFound("ResourceGroupNotFound")
	}
	lb := p
	id := b.id(rg, "Microsoft.Network", "loadBalancers", name)
	lb.ID, lb.Name, lb.Type = to(id), to(name), to("Microsoft.Network/loadBalancers")
	if lb.SKU == nil || val(lb.SKU.Name) != armnetwork.LoadBalancerSKUNameStandard {
		return resp, errResp(http.StatusBadRequest, "AzureTestOnlyStandardSku")
	}
	props := armnetwork.LoadBalancerPropertiesFormat{}
	if p.Properties != nil {
		props = *p.Properties
	}
	props.ProvisioningState = to(armnetwork.ProvisioningStateSucceeded)
	names := map[string]bool{}
	sub := func(kind, n string) string { return id + "/" + kind + "/" + n }
	for _, f := range props.FrontendIPConfigurations {
		f.ID = to(sub("frontendIPConfigurations", val(f.Name)))
		names[strings.ToLower(val(f.ID))] = true
		if f.Properties == nil || f.Properties.PublicIPAddress == nil {
			return resp, errResp(http.StatusBadRequest, "InvalidRequestFormat")
		}
		ip, ok := b.pips[idKey(val(f.Properties.PublicIPAddress.ID))]
		if !ok {
			return resp, errResp(http.StatusBadRequest, "InvalidResourceReference")
		}
		if c := ip.Properties.IPConfiguration; c != nil && !strings.EqualFold(val(c.ID), val(f.ID)) {
			return resp, errResp(http.StatusBadRequest, "PublicIPAddressInUse")
		}
		if ip.SKU == nil || val(ip.SKU.Name) != armnetwork.PublicIPAddressSKUNameStandard {
			return resp, errResp(http.StatusBadRequest, "PublicIPAndLBSkuDoNotMatch")
		}
		ip.Properties.IPConfiguration = &armnetwork.IPConfiguration{ID: f.ID}
	}
	for _, pool := range props.BackendAddressPools {
		pool.ID = to(sub("backendAddressPools", val(pool.Name)))
		names[strings.ToLower(val(pool.ID))] = true
	}
	for _, pr := range props.Probes {
		pr.ID = to(sub("probes", val(pr.Name)))
		names[strings.ToLower(val(pr.ID))] = true
		if pr.Properties == nil || val(pr.Properties.Port) < 1 || val(pr.Properties.Port) > 65535 {
			return resp, errResp(http.StatusBadRequest, "InvalidProbePort")
		}
	}
	ports := map[int32]bool{}
	for _, r := range props.LoadBalancingRules {
		r.ID = to(sub("loadBalancingRules", val(r.Name)))
		rp := r.Properties
		if rp == nil || rp.FrontendIPConfiguration == nil || rp.BackendAddressPool == nil || rp.Probe == nil {
			return resp, errResp(http.StatusBadRequest, "InvalidRequestFormat")
		}
		for _, ref := range []*armnetwork.SubResource{rp.FrontendIPConfiguration, rp.BackendAddressPool, rp.Probe} {
			if !names[strings.ToLower(val(ref.ID))] {
				return resp, errResp(http.StatusBadRequest, "InvalidResourceReference")
			}
		}
		if ports[val(rp.FrontendPort)] {
			return resp, errResp(http.StatusBadRequest, "LoadBalancingRuleFrontendPortInUse")
		}
		ports[val(rp.FrontendPort)] = true
	}
	// A frontend IP the new definition no longer names is free again.
	if old, ok := b.lbs[key(rg, name)]; ok && old.Properties != nil {
		for _, f := range old.Properties.FrontendIPConfigurations {
			if !names[strings.ToLower(val(f.ID))] && f.Properties != nil && f.Properties.PublicIPAddress != nil {
				if ip, ok := b.pips[idKey(val(f.Properties.PublicIPAddress.ID))]; ok {
					ip.Properties.IPConfiguration = nil
				}
			}
		}
	}
	lb.Properties = &props
	b.lbs[key(rg, name)] = &lb
	return lro(b, http.StatusCreated, http.StatusOK, armnetwork.LoadBalancersClientCreateOrUpdateResponse{LoadBalancer: b.lbView(&lb)}), e
}

// lbView fills the pools' BackendIPConfigurations from the NICs.
func (b *Backend) lbView(lb *armnetwork.LoadBalancer) armnetwork.LoadBalancer {
	out := *lb
	if lb.Properties == nil {
		return out
	}
	props := *lb.Properties
	var pools []*armnetwork.BackendAddressPool
	for _, p := range props.BackendAddressPools {
		pc := *p
		pp := armnetwork.BackendAddressPoolPropertiesFormat{}
		for _, n := range b.nics {
			for _, c := range n.Properties.IPConfigurations {
				for _, ref := range c.Properties.LoadBalancerBackendAddressPools {
					if strings.EqualFold(val(ref.ID), val(p.ID)) {
						pp.BackendIPConfigurations = append(pp.BackendIPConfigurations, &armnetwork.InterfaceIPConfiguration{ID: c.ID})
					}
				}
			}
		}
		pc.Properties = &pp
		pools = append(pools, &pc)
	}
	props.BackendAddressPools = pools
	out.Properties = &props
	return out
}

func (b *Backend) lbGet(ctx context.Context, rg, name string, _ *armnetwork.LoadBalancersClientGetOptions) (resp azfake.Responder[armnetwork.LoadBalancersClientGetResponse], e azfake.ErrorResponder) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	lb, ok := b.lbs[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	resp.SetResponse(http.StatusOK, armnetwork.LoadBalancersClientGetResponse{LoadBalancer: b.lbView(lb)}, nil)
	return resp, e
}

func (b *Backend) lbDelete(ctx context.Context, rg, name string, _ *armnetwork.LoadBalancersClientBeginDeleteOptions) (resp azfake.PollerResponder[armnetwork.LoadBalancersClientDeleteResponse], e azfake.ErrorResponder) {
	if f := b.fault("LoadBalancersClient.BeginDelete", rg, name); f.Code != "" {
		return resp, errResp(f.Status, f.Code)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	lb, ok := b.lbs[key(rg, name)]
	if !ok {
		return resp, notFound("ResourceNotFound")
	}
	for _, p := range b.lbView(lb).Properties.BackendAddressPools {
		if len(p.Properties.BackendIPConfigurations) > 0 {
			return resp, errResp(http.StatusBadRequest, "LoadBalancerInUseByVirtualMachineNetworkInterface")
		}
	}
	for _, f := range lb.Properties.FrontendIPConfigurations {
		if ip, ok := b.pips[idKey(val(f.Properties.PublicIPAddress.ID))]; ok {
			ip.Properties.IPConfiguration = nil
		}
	}
	delete(b.lbs, key(rg, name))
	return lro(b, http.StatusAccepted, http.StatusOK, armnetwork.LoadBalancersClientDeleteResponse{}), e
}

// lbPoolExists reports whether a backend pool ID names a pool of a balancer
// the backend holds.
func (b *Backend) lbPoolExists(id string) bool {
	lbID, _, ok := strings.Cut(strings.ToLower(id), "/backendaddresspools/")
	if !ok {
		return false
	}
	lb, found := b.lbs[idKey(lbID)]
	if !found {
		return false
	}
	for _, p := range lb.Properties.BackendAddressPools {
		if strings.EqualFold(val(p.ID), id) {
			return true
		}
	}
	return false
}

// LoadBalancer returns the balancer as Get shows it (nil when none).
func (b *Backend) LoadBalancer(rg, name string) *armnetwork.LoadBalancer {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.init()
	lb, ok := b.lbs[key(rg, name)]
	if !ok {
		return nil
	}
	v := b.lbView(lb)
	return &v
}
