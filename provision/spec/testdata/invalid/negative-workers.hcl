name = "neg"
managers { count = 1 }
workers {
  count = -2
}
