name = "logs"
managers { count = 1 }
logging {
  driver  = "gelf"
  options = { gelf-address = "udp://10.0.0.9:12201", gelf-compression-type = "bogus", gelf-compression-level = "99", gelf-tcp-max-reconnect = "5" }
}
engine {
  registry_mirrors = ["https://m.internal?x=1", "https://m.internal#f"]
}
