package aws

import (
	"context"
	"fmt"
	"slices"
	"sync"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// imageQuery finds the newest image of one OS family for an architecture.
type imageQuery struct {
	Desc  string // for messages: "Debian 12"
	Owner string // the publisher's account
	Name  string // name pattern, %s = "amd64" or "arm64"
	// Filters are added to the name, architecture and state filters.
	Filters []types.Filter
}

// imageFamilies are tried in order when the block names no AMI.
var imageFamilies = []imageQuery{
	{Desc: "Debian 12", Owner: "136693071363", Name: "debian-12-%s-*", Filters: ebsHVM},
	{Desc: "Ubuntu 24.04", Owner: "099720109477", Name: "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-%s-server-*", Filters: ebsHVM},
}

var ebsHVM = []types.Filter{filter("root-device-type", "ebs"), filter("virtualization-type", "hvm")}

type imageInfo struct {
	id         string
	name       string
	arch       string // EC2 architecture: "x86_64", "arm64"
	rootDevice string
	minGiB     int // size of the root snapshot
}

// imageCache remembers resolved images and architectures for the driver's
// lifetime (one command).
type imageCache struct {
	mu   sync.Mutex
	arch map[string]string // instance type -> architecture
	// instance type -> its hypervisor (where the guest sees an EBS volume)
	hypervisor map[string]types.InstanceTypeHypervisor
	images     map[string]imageInfo // architecture -> image
}

func (d *Driver) cache() *imageCache { return &d.images }

// instanceArch checks that the instance type exists in the region and
// returns the architecture its images need (x86_64 preferred).
func (d *Driver) instanceArch(ctx context.Context, cli *ec2.Client, itype string) (string, error) {
	c := d.cache()
	c.mu.Lock()
	defer c.mu.Unlock()
	if a, ok := c.arch[itype]; ok {
		return a, nil
	}
	out, err := cli.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{types.InstanceType(itype)}})
	if err != nil {
		return "", fmt.Errorf("instance type %q: %w", itype, d.explain(err))
	}
	if len(out.InstanceTypes) == 0 || out.InstanceTypes[0].ProcessorInfo == nil {
		return "", fmt.Errorf("instance type %q is not offered in region %s", itype, d.region)
	}
	archs := out.InstanceTypes[0].ProcessorInfo.SupportedArchitectures
	var arch string
	for _, want := range []types.ArchitectureType{types.ArchitectureTypeX8664, types.ArchitectureTypeArm64} {
		if slices.Contains(archs, want) {
			arch = string(want)
			break
		}
	}
	if arch == "" {
		return "", fmt.Errorf("instance type %q supports neither x86_64 nor arm64 (%v)", itype, archs)
	}
	c.arch[itype] = arch
	if c.hypervisor == nil {
		c.hypervisor = map[string]types.InstanceTypeHypervisor{}
	}
	c.hypervisor[itype] = out.InstanceTypes[0].Hypervisor
	return arch, nil
}

// image returns the block's AMI (checked to exist and to match arch) or the
// newest Debian 12 (else Ubuntu 24.04) image for arch.
func (d *Driver) image(ctx context.Context, cli *ec2.Client, arch string) (imageInfo, error) {
	c := d.cache()
	c.mu.Lock()
	defer c.mu.Unlock()
	if img, ok := c.images[arch]; ok {
		return img, nil
	}
	var (
		img imageInfo
		err error
	)
	if d.cfg.AMI != "" {
		img, err = d.describeImage(ctx, cli, d.cfg.AMI)
		if err == nil && img.arch != arch {
			err = fmt.Errorf("AMI %s is built for %s, but the instance type needs %s", img.id, img.arch, arch)
		}
	} else {
		img, err = d.findImage(ctx, cli, arch, imageFamilies)
	}
	if err != nil {
		return imageInfo{}, err
	}
	c.images[arch] = img
	return img, nil
}

func (d *Driver) describeImage(ctx context.Context, cli *ec2.Client, id string) (imageInfo, error) {
	out, err := cli.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
	if err != nil {
		return imageInfo{}, fmt.Errorf("AMI %s: %w", id, d.explain(err))
	}
	if len(out.Images) == 0 {
		return imageInfo{}, fmt.Errorf("AMI %s not found in region %s (AMI IDs differ per region)", id, d.region)
	}
	return toImageInfo(out.Images[0])
}

// findImage returns the newest available image of the first family that has
// one for arch.
func (d *Driver) findImage(ctx context.Context, cli *ec2.Client, arch string, families []imageQuery) (imageInfo, error) {
	short := map[string]string{"x86_64": "amd64", "arm64": "arm64"}[arch]
	var tried []string
	for _, f := range families {
		p := ec2.NewDescribeImagesPaginator(cli, &ec2.DescribeImagesInput{
			Owners: []string{f.Owner},
			Filters: append([]types.Filter{
				filter("name", fmt.Sprintf(f.Name, short)),
				filter("architecture", arch),
				filter("state", "available"),
			}, f.Filters...),
		})
		var best *types.Image
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return imageInfo{}, fmt.Errorf("look up %s images: %w", f.Desc, d.explain(err))
			}
			for i := range page.Images {
				// CreationDate is RFC 3339 in UTC: string order is time order.
				if best == nil || awssdk.ToString(page.Images[i].CreationDate) > awssdk.ToString(best.CreationDate) {
					best = &page.Images[i]
				}
			}
		}
		if best != nil {
			img, err := toImageInfo(*best)
			if err == nil {
				d.log.InfoContext(ctx, "using image", "ami", img.id, "name", img.name, "arch", arch)
			}
			return img, err
		}
		tried = append(tried, f.Desc)
	}
	return imageInfo{}, fmt.Errorf("no %v image for %s in region %s: set ami in the driver block", tried, arch, d.region)
}

func toImageInfo(im types.Image) (imageInfo, error) {
	img := imageInfo{
		id:         awssdk.ToString(im.ImageId),
		name:       awssdk.ToString(im.Name),
		arch:       string(im.Architecture),
		rootDevice: awssdk.ToString(im.RootDeviceName),
	}
	if img.rootDevice == "" {
		return imageInfo{}, fmt.Errorf("AMI %s has no root device name", img.id)
	}
	for _, b := range im.BlockDeviceMappings {
		if awssdk.ToString(b.DeviceName) == img.rootDevice && b.Ebs != nil {
			img.minGiB = int(awssdk.ToInt32(b.Ebs.VolumeSize))
		}
	}
	return img, nil
}
