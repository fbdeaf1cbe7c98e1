name = "mixed"
driver "local" {}
managers { count = 1 }
workers {
  driver = "aws"
  count  = 2
}
