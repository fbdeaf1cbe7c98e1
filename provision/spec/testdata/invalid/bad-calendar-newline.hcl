name = "cal"
managers { count = 1 }
prune {
  schedule = <<EOT
daily
EOT
}
