name = "edges"
managers { count = 1 }
engine {
  version = ""
}
prune {
  randomized_delay = "-0s"
  until            = "-0h"
}
tls {
  validity     = "90m"
  renew_before = "90m"
}
