package azure

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// errorCode returns the Resource Manager error code of err and its HTTP
// status (0 when err is not a response error).
func errorCode(err error) (string, int) {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.ErrorCode, re.StatusCode
	}
	return "", 0
}

func isCode(err error, codes ...string) bool {
	c, _ := errorCode(err)
	for _, want := range codes {
		if strings.EqualFold(c, want) {
			return true
		}
	}
	return false
}

// isNotFound: the resource (or its group) does not exist.
func isNotFound(err error) bool {
	c, status := errorCode(err)
	return status == http.StatusNotFound || strings.EqualFold(c, "ResourceNotFound") ||
		strings.EqualFold(c, "ResourceGroupNotFound") || strings.EqualFold(c, "NotFound")
}

// explain turns the errors users meet into a message that says what to do.
// The original error stays wrapped (errors.As still finds the
// *azcore.ResponseError).
func (d *Driver) explain(err error) error {
	if err == nil {
		return nil
	}
	code, status := errorCode(err)
	lc := strings.ToLower(code)
	loc := d.cfg.Location
	switch {
	case lc == "authorizationfailed" || lc == "linkedauthorizationfailed":
		return fmt.Errorf("the Azure identity lacks a permission this needs (Contributor on the subscription or on the resource group is enough; the message names the action): %w", err)
	case strings.HasPrefix(lc, "invalidauthenticationtoken") || lc == "expiredauthenticationtoken" || status == http.StatusUnauthorized:
		return fmt.Errorf("Azure refused the credentials (run `az login` again, check AZURE_TENANT_ID/AZURE_CLIENT_ID and that the identity belongs to the subscription's tenant): %w", err)
	case lc == "subscriptionnotfound" || lc == "invalidsubscriptionid" || lc == "subscriptionnotregistered" || lc == "readonlydisabledsubscription":
		return fmt.Errorf("subscription %q cannot be used (check subscription_id or AZURE_SUBSCRIPTION_ID, and that it is enabled): %w", d.cfg.SubscriptionID, err)
	case lc == "missingsubscriptionregistration":
		return fmt.Errorf("a resource provider (Microsoft.Compute, Microsoft.Network) is not registered for the subscription: run `az provider register -n Microsoft.Compute` and `-n Microsoft.Network`: %w", err)
	case lc == "toomanyrequests" || lc == "subscriptionrequeststhrottled" || status == http.StatusTooManyRequests:
		return fmt.Errorf("Azure kept throttling the requests after the SDK's retries (lower parallelism in the spec, or retry later): %w", err)
	case lc == "quotaexceeded" || strings.Contains(lc, "limitreached") || strings.Contains(lc, "quota") ||
		lc == "operationnotallowed" && strings.Contains(strings.ToLower(err.Error()), "quota"):
		return fmt.Errorf("Azure quota reached in %s (request an increase under Subscriptions > Usage + quotas, pick a smaller size or another location): %w", loc, err)
	case lc == "skunotavailable" || lc == "vmsizenotsupported" || lc == "invalidparameter" && strings.Contains(strings.ToLower(err.Error()), "vmsize"):
		return fmt.Errorf("VM size not available in %s for this subscription (`az vm list-skus -l %s -o table` lists them): %w", loc, loc, err)
	case lc == "allocationfailed" || lc == "zonalallocationfailed" || lc == "overconstrainedallocationrequest" || lc == "overconstrainedzonalallocationrequest":
		return fmt.Errorf("Azure has no capacity for this VM size in %s (or its zone) right now (retry later, pick another size, zone or location): %w", loc, err)
	case lc == "platformimagenotfound" || lc == "imagenotfound" || lc == "invalidimagereference" || lc == "marketplacepurchaseeligibilityfailed":
		return fmt.Errorf("image %s is not usable in %s (`az vm image list -l %s -p %s --all` lists its versions): %w", d.cfg.Image, loc, loc, d.cfg.Image.Publisher, err)
	case lc == "locationnotavailableforresourcetype" || lc == "locationnotavailableforresourcegroup" || lc == "noregisteredproviderfound" || lc == "invalidlocation":
		return fmt.Errorf("location %q is not available (`az account list-locations -o table` lists them): %w", loc, err)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return fmt.Errorf("cannot resolve the Azure endpoint (is the network up; for cloud = \"custom\", is resource_manager_endpoint right?): %w", err)
	}
	return err
}
