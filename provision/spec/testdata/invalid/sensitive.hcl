variable "token" {
  sensitive = true
  type      = number
  default   = "hunter2-not-a-number"
}
variable "schedule" {
  sensitive = true
  default   = "Sun 03:00 Secret/Zone"
}
name = "sens"
managers { count = 1 }
prune { schedule = var.schedule }
