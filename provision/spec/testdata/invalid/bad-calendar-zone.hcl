name = "cal"
managers { count = 1 }
prune {
  schedule = "*-*-* 03:00 Mars/Olympus"
}
