name = "even"
managers { count = 2 }
workers { count = "x" }
