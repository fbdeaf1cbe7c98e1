# A demo swarm on AWS EC2: a dedicated VPC, one manager and two workers of
# the smallest sensible size, Debian 12 looked up per architecture.
# Credentials and region come from the SDK's default chain (AWS_PROFILE,
# AWS_REGION, SSO, instance roles) or the attributes below.
#
#   provision plan examples/aws.hcl      # works without credentials
#   provision apply examples/aws.hcl
#   provision destroy examples/aws.hcl   # leaves nothing billable

variable "region" {
  default = "eu-west-1"
}

variable "allowed_cidrs" {
  type        = list(string)
  default     = []
  description = "who may reach SSH and the TLS engine port; empty = this machine's public address"
}

name = "aws-demo"

driver "aws" {
  region              = var.region
  create_vpc          = true
  instance_type       = "t3.small"
  allowed_cidrs       = var.allowed_cidrs
  detect_operator_ip  = true
  associate_public_ip = true
  launch_batch        = 10   # new machines of a pool launched together, per subnet (1: one call each)
}

managers {
  count = 1
  disk  = "20GiB"
}

workers {
  count = 2
  disk  = 30
  # docker_disk = "20GiB"  # a second encrypted EBS volume for /var/lib/docker (CIS Docker 1.1.1)
  size  = "t3.small"
}

tls {
  validity = "2160h"
}

# How long apply keeps retrying SSH while an instance boots and cloud-init
# installs the host key provision generated for it (default 3m).
ssh {
  connect_timeout = "5m"
}

# Ports services publish (docker service create -p 80:80 ...) are served by
# the cloud's load balancer, made when the first one is published; README
# "Load balancer". `provision lb deploy` keeps it in step from the managers.
load_balancer {
  published_cidrs = ["0.0.0.0/0"]
}
