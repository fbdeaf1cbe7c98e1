name = "logs"
managers { count = 1 }
logging {
  driver  = "json-file"
  options = { max-size = "0", labels-regex = "([a-z", compress = "true", max-file = "1" }
}
