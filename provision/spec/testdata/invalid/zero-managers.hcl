name = "zero"
managers { count = 0 }
