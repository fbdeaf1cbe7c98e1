package aws

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/provision/provision/drivers"
)

// apiErr builds the error the SDK returns for an EC2 error answer: an
// OperationError around the API error.
func apiErr(op, code, msg string) error {
	return &smithy.OperationError{ServiceID: "EC2", OperationName: op,
		Err: &smithy.GenericAPIError{Code: code, Message: msg, Fault: smithy.FaultClient}}
}

func TestExplain(t *testing.T) {
	d := newDriver(Config{}, drivers.Options{})
	d.region = "eu-west-3"
	for _, c := range []struct {
		err  error
		want []string
	}{
		{apiErr("DescribeAvailabilityZones", "AuthFailure", "AWS was not able to validate the provided access credentials"),
			[]string{"AWS refused the credentials", "AWS_PROFILE", "eu-west-3"}},
		{apiErr("DescribeAvailabilityZones", "InvalidClientTokenId", "The security token included in the request is invalid"),
			[]string{"AWS refused the credentials"}},
		{apiErr("RunInstances", "UnauthorizedOperation", "You are not authorized to perform this operation. Encoded authorization failure message: x"),
			[]string{"lack a permission"}},
		{apiErr("CreateLoadBalancer", "AccessDenied", "User is not authorized to perform: elasticloadbalancing:CreateLoadBalancer"),
			[]string{"lack a permission", "region eu-west-3", "elasticloadbalancing:CreateLoadBalancer"}},
		{apiErr("CreateLogGroup", "AccessDeniedException", "User is not authorized to perform: logs:CreateLogGroup"),
			[]string{"lack a permission"}},
		{apiErr("DescribeAvailabilityZones", "OptInRequired", "You are not subscribed to this service"),
			[]string{"region eu-west-3", "not enabled for this AWS account"}},
		{apiErr("RunInstances", "PendingVerification", "Your request for accessing resources in this region is being validated"),
			[]string{"cannot launch instances yet"}},
		{apiErr("RunInstances", "VcpuLimitExceeded", "You have requested more vCPU capacity than your current vCPU limit of 32 allows"),
			[]string{"AWS quota reached in region eu-west-3", "Service Quotas"}},
		{apiErr("RunInstances", "InstanceLimitExceeded", "Your quota allows for 0 more running instance(s)"),
			[]string{"AWS quota reached"}},
		{apiErr("CreateVpc", "VpcLimitExceeded", "The maximum number of VPCs has been reached."),
			[]string{"AWS quota reached"}},
		{apiErr("RunInstances", "InsufficientInstanceCapacity", "We currently do not have sufficient t3.small capacity"),
			[]string{"no capacity", "another type"}},
		{apiErr("DescribeInstanceTypes", "InvalidInstanceType", "The following supplied instance types do not exist: [t9.enormous]"),
			[]string{"instance type not available in region eu-west-3", "describe-instance-type-offerings"}},
		{apiErr("RunInstances", "Unsupported", "Your requested instance type (t3.small) is not supported in your requested Availability Zone"),
			[]string{"instance type not available"}},
		{apiErr("DescribeImages", "InvalidAMIID.NotFound", "The image id '[ami-0123]' does not exist"),
			[]string{"AMI not found or not usable in region eu-west-3", "differ per region"}},
		{apiErr("DescribeImages", "InvalidAMIID.Malformed", "Invalid id: \"ami-x\""),
			[]string{"AMI not found"}},
		{apiErr("DescribeSubnets", "InvalidSubnetID.NotFound", "The subnet ID 'subnet-0aa' does not exist"),
			[]string{"subnet or VPC not found in region eu-west-3"}},
		{apiErr("RunInstances", "RequestLimitExceeded", "Request limit exceeded."),
			[]string{"throttling", "parallelism"}},
		// A region that does not exist has no endpoint: the name does not resolve.
		{&smithy.OperationError{ServiceID: "EC2", OperationName: "DescribeAvailabilityZones", Err: &smithyhttp.RequestSendError{
			Err: fmt.Errorf("dial: %w", &net.DNSError{Err: "no such host", Name: "ec2.eu-west-9.amazonaws.com", IsNotFound: true})}},
			[]string{`cannot resolve the EC2 endpoint for region "eu-west-3"`, "region name right"}},
	} {
		got := d.explain(c.err)
		for _, w := range c.want {
			if !strings.Contains(got.Error(), w) {
				t.Errorf("explain(%v) = %q, lacks %q", c.err, got, w)
			}
		}
		// The original stays reachable: callers test codes after explain.
		if !errors.Is(got, c.err) || apiCode(got) != apiCode(c.err) {
			t.Errorf("explain(%v) lost the original error", c.err)
		}
	}
	// Unknown errors pass through unchanged; nil stays nil.
	other := apiErr("RunInstances", "InvalidParameterCombination", "no")
	if d.explain(other) != other || d.explain(nil) != nil {
		t.Error("explain changed an error it does not know")
	}
}

func TestErrorCodes(t *testing.T) {
	nf := apiErr("DescribeKeyPairs", "InvalidKeyPair.NotFound", "The key pair 'x' does not exist")
	if !isNotFound(nf) || !isNotFound(fmt.Errorf("wrapped: %w", nf)) || apiCode(nf) != "InvalidKeyPair.NotFound" {
		t.Errorf("not found: %v %q", isNotFound(nf), apiCode(nf))
	}
	for _, err := range []error{
		apiErr("DescribeImages", "InvalidAMIID.Malformed", "x"),
		apiErr("DeleteVpc", "DependencyViolation", "x"),
		errors.New("InvalidThing.NotFound"), // not an API error
		nil,
	} {
		if isNotFound(err) {
			t.Errorf("isNotFound(%v)", err)
		}
	}
	dv := apiErr("DeleteVpc", "DependencyViolation", "x")
	if !isCode(dv, "Other", "DependencyViolation") || isCode(dv, "Other") || apiCode(errors.New("plain")) != "" {
		t.Error("isCode/apiCode")
	}
}

func TestRegionNames(t *testing.T) {
	for _, r := range []string{"us-east-1", "eu-west-3", "ap-southeast-4", "us-gov-west-1", "cn-northwest-1", "il-central-1", "eu-isoe-west-1"} {
		if !regionRe.MatchString(r) {
			t.Errorf("%s refused", r)
		}
	}
	for _, r := range []string{"eu-west", "euwest1", "EU-WEST-1", "eu-west-1a", "us-east-1 ", "eu_west_1"} {
		if regionRe.MatchString(r) {
			t.Errorf("%q accepted", r)
		}
	}
	_, diags := decode(t, `
region        = "eu-west"
allowed_cidrs = ["10.0.0.0/8"]
`)
	if !diags.HasErrors() || !strings.Contains(diags.Error(), `"eu-west" is not an AWS region name`) {
		t.Errorf("decode: %v", diags)
	}
}
