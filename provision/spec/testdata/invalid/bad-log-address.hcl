name = "logs"
managers { count = 1 }
logging {
  driver  = "fluentd"
  options = { fluentd-address = "tcp://fluent.internal:99999" }
}
