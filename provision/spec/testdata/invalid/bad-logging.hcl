name = "logs"
managers { count = 1 }
logging {
  driver  = "json-file"
  options = { max-size = "ten megabytes", rotate = "yes" }
}
