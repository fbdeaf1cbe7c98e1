# A demo swarm on Azure: a resource group of its own (provision-<cluster id>)
# with a VNet, a network security group, one manager and two workers on
# Debian 12, spread over the location's availability zones.
# Credentials come from azidentity's default chain (`az login`, the
# AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET environment,
# workload or managed identity); the subscription from AZURE_SUBSCRIPTION_ID
# or subscription_id below.
#
#   provision plan examples/azure.hcl      # works without credentials
#   provision apply examples/azure.hcl
#   provision destroy examples/azure.hcl   # deletes the resource group it made

variable "location" {
  default = "westeurope"
}

variable "allowed_cidrs" {
  type        = list(string)
  default     = []
  description = "who may reach SSH and the TLS engine port; empty = this machine's public address"
}

name = "azure-demo"

driver "azure" {
  location           = var.location
  vm_size            = "Standard_B2s"
  image              = "Debian:debian-12:12-gen2:latest"
  os_disk_type       = "StandardSSD_LRS"
  allowed_cidrs      = var.allowed_cidrs
  detect_operator_ip = true
  public_ip          = true
}

managers {
  count = 1
  disk  = "30GiB"
}

workers {
  count = 2
  disk  = 32
  size  = "Standard_B2s"
}

tls {
  validity = "2160h"
}

# How long apply keeps retrying SSH while a VM boots and cloud-init installs
# the host key provision generated for it (default 3m).
ssh {
  connect_timeout = "5m"
}

# Ports services publish (docker service create -p 80:80 ...) are served by
# the cloud's load balancer, made when the first one is published; README
# "Load balancer". `provision lb deploy` keeps it in step from the managers.
load_balancer {
  published_cidrs = ["0.0.0.0/0"]
}
