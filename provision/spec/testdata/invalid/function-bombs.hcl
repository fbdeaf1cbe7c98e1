name = "fbomb"
managers {
  count = 1
  labels = {
    w = format("%09999999d", 1)
    r = replace(join("", [for i in range(1000) : "aaaaaaaaaa"]), "a", join("", [for i in range(1000) : "bbbbbbbbbb"]))
  }
}
