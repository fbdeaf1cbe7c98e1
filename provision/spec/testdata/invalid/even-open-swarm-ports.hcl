name = "fw"
managers { count = 1 }
hardening {
  firewall_allow {
    ports = [2377, "2376", "1-65535"]
    from  = ["0.0.0.0/0", "::/0", "10.0.0.0/8"]
  }
  firewall_allow {
    protocol = "udp"
    ports    = ["4789", "7946"]
    from     = ["203.0.113.7"]
  }
  firewall_allow {
    protocol = "udp"
    ports    = ["4789"]
    from     = ["10.1.0.0/16", "fd00::/8"]
  }
  firewall_allow {
    ports = [443, 80]
    from  = ["0.0.0.0/0"]
  }
}
