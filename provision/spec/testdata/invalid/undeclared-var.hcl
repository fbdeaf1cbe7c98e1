name = "vars"
managers { count = var.managers }
