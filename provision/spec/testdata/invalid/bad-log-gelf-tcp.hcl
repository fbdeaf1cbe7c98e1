name = "logs"
managers { count = 1 }
logging {
  driver  = "gelf"
  options = { gelf-address = "tcp://10.0.0.9:12201", gelf-tcp-reconnect-delay = "abc", gelf-compression-level = "1" }
}
