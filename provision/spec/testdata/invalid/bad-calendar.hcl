name = "prune"
managers { count = 1 }
prune { schedule = "every tuesday at 25:00" }
