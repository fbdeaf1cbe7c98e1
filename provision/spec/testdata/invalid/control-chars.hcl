name = "zp]0;PWNED[2J"
managers { count = 1 }
