package aws

import (
	"errors"
	"fmt"
	"net"
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

// explain turns the errors users meet into a message that says what to do.
// The original error stays wrapped (errors.As still finds the API error).
func (d *Driver) explain(err error) error {
	if err == nil {
		return nil
	}
	code := apiCode(err)
	switch {
	case code == "AuthFailure" || code == "UnauthorizedOperation" || code == "InvalidClientTokenId" ||
		code == "SignatureDoesNotMatch" || code == "OptInRequired" || code == "UnrecognizedClientException":
		return fmt.Errorf("AWS refused the request (check the credentials, their permissions and that region %s is enabled for the account): %w", d.region, err)
	case code == "InstanceLimitExceeded" || code == "VcpuLimitExceeded" || code == "MaxSpotInstanceCountExceeded" ||
		code == "VpcLimitExceeded" || code == "AddressLimitExceeded" || code == "InternetGatewayLimitExceeded" ||
		code == "SecurityGroupLimitExceeded" || code == "RulesPerSecurityGroupLimitExceeded":
		return fmt.Errorf("AWS quota reached in region %s (request an increase in the Service Quotas console, pick a smaller instance type or another region): %w", d.region, err)
	case code == "InsufficientInstanceCapacity":
		return fmt.Errorf("AWS has no capacity for this instance type in that availability zone right now (retry later or pick another type): %w", err)
	case code == "InvalidInstanceType" || code == "Unsupported":
		return fmt.Errorf("instance type not available in region %s (run `aws ec2 describe-instance-type-offerings` to list them): %w", d.region, err)
	case strings.HasPrefix(code, "InvalidAMIID."):
		return fmt.Errorf("AMI not found or not usable in region %s (AMI IDs differ per region): %w", d.region, err)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return fmt.Errorf("cannot resolve the EC2 endpoint for region %q (is the region name right?): %w", d.region, err)
	}
	return err
}
