name = "logs"
managers { count = 1 }
logging { driver = "splunk-ish" }
