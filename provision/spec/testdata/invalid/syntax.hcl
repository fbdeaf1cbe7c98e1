name = "syntax"
managers {
  count = 1
