name = "My_Cluster"
managers { count = 1 }
