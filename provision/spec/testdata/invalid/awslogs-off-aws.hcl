name = "logs"
driver "local" {}
managers { count = 1 }
logging {
  driver  = "awslogs"
  options = { awslogs-region = "eu-west-1", awslogs-group = "demo" }
}
