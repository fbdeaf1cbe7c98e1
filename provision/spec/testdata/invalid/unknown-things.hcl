name = "unknown"
managers {
  count  = 1
  colour = "blue"
}
cluster_size = 3
firewall { open = true }
