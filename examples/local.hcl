# The local default: a TLS-secured swarm of system containers on this
# machine's Docker engine (make host-image builds their image).
#
#   provision apply examples/local.hcl
#   provision status examples/local.hcl
#   provision destroy examples/local.hcl

variable "workers" {
  type    = number
  default = 2
}

name = "demo"

driver "local" {}

managers {
  count = 1
}

workers {
  count  = var.workers
  labels = { tier = "app" }
}

logging {
  driver  = "json-file"
  options = { max-size = "10m", max-file = "3" }
}

prune {
  schedule = "daily"
  until    = "24h"
}
