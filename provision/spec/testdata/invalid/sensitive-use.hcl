variable "schedule" {
  sensitive = true
  default   = "Sun 03:00 Secret/Zone"
}
name = "sens"
managers {
  count  = 1
  labels = { "bad key ${var.schedule}" = "x" }
}
prune { schedule = var.schedule }
