name = "types"
managers { count = "three" }
workers {
  count  = 1
  labels = ["a", "b"]
}
prune { enabled = "sometimes" }
