name = "bomb"
managers {
  count = 1
  labels = {
    a = join(",", [for a in range(1000) : join(",", [for b in range(1000) : tostring(b)])])
  }
}
