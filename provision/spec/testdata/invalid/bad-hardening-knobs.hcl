name = "metal"
managers { count = 1 }
engine {
  version = "20.10.2"
}
hardening {
  ssh_users  = ["backup", "root", "Bad User"]
  ssh_groups = ["ops", "ops"]
  firewall_allow {
    protocol = "sctp"
    ports    = [80, "9100-9000", 70000]
  }
  firewall_allow {
    ports = [443]
    from  = ["0.0.0.0/0", "somewhere"]
  }
}
