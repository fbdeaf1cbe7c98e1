package aws

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/hashicorp/hcl/v2/hclparse"
	"golang.org/x/crypto/ssh"

	"github.com/provision/provision/drivers"
	"github.com/provision/provision/drivers/aws/awstest"
	"github.com/provision/provision/provision/redact"
)

// motoURL is the moto_server this test binary started ("" when none).
var (
	motoURL  string
	motoSkip string
)

// TestMain starts moto_server on a free 127.0.0.1 port for the whole test
// binary, with fake static credentials set in this process only. Without
// moto_server the tests that need it skip, unless PROVISION_REQUIRE_MOTO=1.
func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// Keep the operator's own AWS setup out of the tests entirely.
	dir, err := os.MkdirTemp("", "provision-aws-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	awstest.Isolate(dir)

	moto, err := awstest.StartMoto(dir)
	if errors.Is(err, awstest.ErrNoMoto) {
		if os.Getenv("PROVISION_REQUIRE_MOTO") == "1" {
			fmt.Fprintln(os.Stderr, "moto_server not found in PATH and PROVISION_REQUIRE_MOTO=1: install moto[server]")
			return 1
		}
		motoSkip = "moto_server not found in PATH (install moto[server]; PROVISION_REQUIRE_MOTO=1 turns this skip into a failure)"
		return m.Run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer moto.Stop()
	motoURL = moto.URL
	return m.Run()
}

func needMoto(t *testing.T) {
	t.Helper()
	if motoURL == "" {
		t.Skip(motoSkip)
	}
}

// sdk is a plain EC2 client on moto for the tests' own setup and assertions.
func sdk(t *testing.T) *ec2.Client {
	t.Helper()
	needMoto(t)
	return ec2.New(ec2.Options{
		Region:       "us-east-1",
		BaseEndpoint: awssdk.String(motoURL),
		Credentials: awssdk.CredentialsProviderFunc(func(context.Context) (awssdk.Credentials, error) {
			return awssdk.Credentials{AccessKeyID: "testing", SecretAccessKey: "testing"}, nil
		}),
	})
}

func newCluster(t *testing.T) string {
	b := make([]byte, 6)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)
}

// testAMI returns an x86_64 EBS image from moto's own catalogue.
func testAMI(t *testing.T) string {
	t.Helper()
	out, err := sdk(t).DescribeImages(context.Background(), &ec2.DescribeImagesInput{Filters: []types.Filter{
		filter("architecture", "x86_64"), filter("root-device-type", "ebs"), filter("state", "available"),
	}})
	if err != nil {
		t.Fatalf("describe images: %v", err)
	}
	for _, im := range out.Images {
		if awssdk.ToString(im.RootDeviceName) != "" {
			return awssdk.ToString(im.ImageId)
		}
	}
	t.Fatal("moto lists no x86_64 EBS image")
	return ""
}

// driverFromHCL runs the real factory on an HCL driver body, pointed at moto.
func driverFromHCL(t *testing.T, body string) *Driver {
	t.Helper()
	needMoto(t)
	src := fmt.Sprintf("endpoint = %q\n%s\n", motoURL, body)
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "aws.hcl")
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	d, diags := New(f.Body, drivers.Options{Name: "aws"})
	if diags.HasErrors() {
		t.Fatalf("New: %v", diags)
	}
	drv := d.(*Driver)
	drv.waitMin = 20 * time.Millisecond
	return drv
}

var testHostKey = genHostKey()

func genHostKey() drivers.HostKey {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		panic(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return drivers.HostKey{PrivatePEM: redact.Secret(pem.EncodeToMemory(block)), Public: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))}
}

var testUserKey = func() string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	sp, _ := ssh.NewPublicKey(pub)
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " operator@test"
}()

func spec(cluster, pool string, i int) drivers.MachineSpec {
	name := fmt.Sprintf("%s-%s-%d", cluster, pool, i)
	role := "worker"
	if pool == "manager" {
		role = "manager"
	}
	return drivers.MachineSpec{
		Name: name, Role: role, Pool: pool,
		Tags:    map[string]string{drivers.TagCluster: cluster, drivers.TagMachine: name, drivers.TagRole: role, drivers.TagPool: pool},
		SSH:     drivers.SSHAccess{User: "provision", PublicKey: testUserKey},
		HostKey: testHostKey,
	}
}
