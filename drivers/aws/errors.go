package aws

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/aws/smithy-go"
)

// apiCode returns the EC2 error code of err ("" when err is not an API error).
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func isCode(err error, codes ...string) bool {
	c := apiCode(err)
	for _, want := range codes {
		if c == want {
			return true
		}
	}
	return false
}

func isNotFound(err error) bool {
	c := apiCode(err)
	return strings.HasPrefix(c, "Invalid") && strings.HasSuffix(c, ".NotFound")
}

// isAccessDenied: the credentials may not make this call (EC2, IAM and
// CloudWatch Logs each name it their own way).
func isAccessDenied(err error) bool {
	return isCode(err, "AccessDenied", "AccessDeniedException", "UnauthorizedOperation")
}

// explain turns the errors users meet into a message that says what to do.
// The original error stays wrapped (errors.As still finds the API error).
func (d *Driver) explain(err error) error {
	if err == nil {
		return nil
	}
	code := apiCode(err)
	switch {
	case code == "UnauthorizedOperation":
		return fmt.Errorf("the AWS credentials lack a permission this needs (see the IAM policy in the driver's documentation; the encoded message says which): %w", err)
	case code == "AccessDenied" || code == "AccessDeniedException":
		// IAM, CloudWatch Logs and Elastic Load Balancing say it this way.
		return fmt.Errorf("the AWS credentials lack a permission this needs in region %s (the message names the action; see the driver's documentation for what load balancers and awslogs need): %w", d.region, err)
	case code == "AuthFailure" || code == "InvalidClientTokenId" || code == "SignatureDoesNotMatch" ||
		code == "UnrecognizedClientException" || code == "ExpiredToken" || code == "RequestExpired":
		return fmt.Errorf("AWS refused the credentials (check AWS_PROFILE or the access keys, that they are not expired, and that region %s is enabled for the account): %w", d.region, err)
	case code == "OptInRequired":
		return fmt.Errorf("region %s (or the service) is not enabled for this AWS account: enable it in the account settings or pick another region: %w", d.region, err)
	case code == "PendingVerification" || code == "Blocked":
		return fmt.Errorf("the AWS account cannot launch instances yet (%s: new accounts are verified first, blocked accounts need AWS support): %w", code, err)
	case code == "RequestLimitExceeded" || code == "Throttling":
		return fmt.Errorf("AWS kept throttling the requests after the SDK's retries (lower parallelism in the spec, or retry later): %w", err)
	case strings.HasSuffix(code, "LimitExceeded") || code == "MaxSpotInstanceCountExceeded" || code == "InsufficientAddressCapacity":
		return fmt.Errorf("AWS quota reached in region %s (request an increase in the Service Quotas console, pick a smaller instance type or another region): %w", d.region, err)
	case code == "InsufficientInstanceCapacity":
		return fmt.Errorf("AWS has no capacity for this instance type in that availability zone right now (retry later or pick another type): %w", err)
	case code == "InvalidInstanceType" || code == "Unsupported" || code == "InvalidParameterValue" && strings.Contains(err.Error(), "instance type"):
		return fmt.Errorf("instance type not available in region %s (run `aws ec2 describe-instance-type-offerings` to list them): %w", d.region, err)
	case strings.HasPrefix(code, "InvalidAMIID."):
		return fmt.Errorf("AMI not found or not usable in region %s (AMI IDs differ per region): %w", d.region, err)
	case strings.HasPrefix(code, "InvalidSubnetID.") || strings.HasPrefix(code, "InvalidVpcID."):
		return fmt.Errorf("subnet or VPC not found in region %s (IDs differ per region and account): %w", d.region, err)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return fmt.Errorf("cannot resolve the EC2 endpoint for region %q (is the region name right, and is the network up?): %w", d.region, err)
	}
	return err
}

// regionRe matches AWS region names: us-east-1, eu-central-2, us-gov-west-1,
// cn-northwest-1, ap-southeast-4, eu-isoe-west-1.
var regionRe = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
