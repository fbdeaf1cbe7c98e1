name = "cal"
managers { count = 1 }
prune {
  schedule = "Mon *-*-~1 03:00"
}
