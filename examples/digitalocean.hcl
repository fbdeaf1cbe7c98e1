# A demo swarm on DigitalOcean: a VPC and a cloud firewall of the cluster's
# own, one manager and two workers on Debian 12, the workers with a 100 GiB
# volume for /var/lib/docker (their size has 60 GiB of disk).
#
#   export PROVISION_VAR_do_token=dop_v1_...   # or DIGITALOCEAN_TOKEN
#   provision plan examples/digitalocean.hcl     # works without a token
#   provision apply examples/digitalocean.hcl
#   provision destroy examples/digitalocean.hcl  # leaves nothing billable
#
# Cost while it runs (list prices): 3 x s-2vcpu-2gb droplets ($18/month
# each) plus 2 x 100 GiB volumes ($10/month each): about $0.11 an hour.

variable "do_token" {
  type        = string
  default     = ""
  sensitive   = true
  description = "a DigitalOcean API token with write scope; empty = DIGITALOCEAN_TOKEN"
}

variable "region" {
  default = "ams3"
}

variable "allowed_cidrs" {
  type        = list(string)
  default     = []
  description = "who may reach SSH and the TLS engine port; empty = this machine's public address"
}

name = "do-demo"

driver "digitalocean" {
  token              = var.do_token
  region             = var.region
  size               = "s-2vcpu-2gb"
  image              = "debian-12-x64"
  allowed_cidrs      = var.allowed_cidrs
  detect_operator_ip = true
}

managers {
  count = 1
}

workers {
  count = 2
  disk  = "100GiB"
}

tls {
  validity = "2160h"
}

# How long apply keeps retrying SSH while a droplet boots and cloud-init
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
