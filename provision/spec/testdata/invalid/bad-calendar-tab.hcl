name = "cal"
managers { count = 1 }
prune {
  schedule = "Sun\t03:00"
}
