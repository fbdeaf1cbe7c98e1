name = "tls"
managers { count = 1 }
tls {
  validity      = "30 days"
  allowed_cidrs = ["10.0.0.0/33"]
}
