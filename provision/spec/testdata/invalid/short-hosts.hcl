name = "metal"
driver "generic" {
  user     = "admin"
  key_file = "id_ed25519"
}
managers {
  count = 3
  hosts = ["10.0.0.1", "10.0.0.2"]
}
