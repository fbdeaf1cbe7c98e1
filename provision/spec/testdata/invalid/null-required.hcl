variable "cluster" {
  type    = string
  default = null
}

name = var.cluster

managers {
  count = 1
}

load_balancer {
  webhook {
    url = null
  }
}
