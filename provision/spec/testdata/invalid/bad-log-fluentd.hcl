name = "logs"
managers { count = 1 }
logging {
  driver  = "fluentd"
  options = { fluentd-retry-wait = "abc", fluentd-buffer-limit = "lots" }
}
