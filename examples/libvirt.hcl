# A one-VM lab swarm on this machine's libvirt: QEMU user-mode networking
# forwards the VM's SSH and engine TLS ports to 127.0.0.1 (nothing to set up
# on the network side). The defaults name what the project's own scripts make:
#
#   acceptance/env/libvirt.sh daemon        # libvirt, QEMU, genisoimage; starts libvirtd
#   acceptance/env/libvirt-image.sh         # Debian 12 base image in pool "provision-acc"
#   provision plan examples/libvirt.hcl     # works without libvirt
#   provision apply examples/libvirt.hcl -var domain_type=qemu   # where KVM does not work (no vmx/svm)
#   provision destroy examples/libvirt.hcl
#
# On a hypervisor of your own: set uri (qemu+ssh://user@host/system), pool and
# image (a qcow2 cloud image with cloud-init, e.g. Debian's genericcloud image,
# uploaded as a volume), and replace user_network by network, bridge or
# network_cidr to run several machines. To spread them over several
# hypervisors (one failure domain each, managers apart), set
# uris = ["qemu+ssh://ops@kvm1/system", "qemu+ssh://ops@kvm2/system"] instead
# of uri, with bridge or network (the hosts' networks must reach each other).

variable "domain_type" {
  default     = "kvm"
  description = "kvm, or qemu (software emulation) where the CPU has no virtualization extensions"
}

variable "pool" {
  default = "provision-acc"
}

variable "image" {
  default = "debian-12-provision.qcow2"
}

name = "vmlab"

driver "libvirt" {
  uri          = "qemu:///system"
  domain_type  = var.domain_type
  pool         = var.pool
  image        = var.image
  user_network = true
  boot_timeout = "10m"
}

managers {
  count = 1
  size  = "2cpu-2g"
  disk  = "20GiB"
  # /var/lib/docker on its own disk (CIS 1.1.1)
  docker_disk = 20
}

# The VM reaches no package mirror for the engine: this machine prepares the
# packages and uploads them.
engine {
  method = "bundle"
}

ssh {
  connect_timeout = "5m"
}
