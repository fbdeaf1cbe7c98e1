name = "nomgr"

workers { count = 2 }
