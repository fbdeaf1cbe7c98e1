# Bare metal: machines that already exist, reached over SSH as a sudo user.
# provision installs and hardens the engine on them and forms the swarm;
# destroy releases them (they leave the swarm) but does not wipe them.
#
#   provision apply examples/generic.hcl -var key_file=$HOME/.ssh/id_ed25519

variable "key_file" {
  default = "~/.ssh/id_ed25519"
}

name = "metal"

driver "generic" {
  user     = "admin"
  key_file = var.key_file
  # Pin host keys you know; others are trusted on first use and then enforced.
  host_keys = {
    "192.0.2.10" = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJHZv6U96VThcn+hOTRycucI2ed+gkpLaTEZa5/V43JH"
  }
  trust_on_first_use = true
}

managers {
  hosts = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
}

workers {
  pool  = "edge"
  hosts = ["192.0.2.20:2222"]
  labels = {
    site = "edge"
  }
}

engine {
  method  = "bundle" # the hosts have no internet: packages are uploaded from here
  version = "20.10.*"
}

hardening {
  auto_reboot = false
}
