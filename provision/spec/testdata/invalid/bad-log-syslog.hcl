name = "logs"
managers { count = 1 }
logging {
  driver  = "syslog"
  options = { syslog-facility = "bogus", syslog-format = "bogus" }
}
