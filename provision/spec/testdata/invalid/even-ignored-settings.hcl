name = "metal"
driver "generic" {
  user     = "admin"
  key_file = "id_ed25519"
}
managers {
  hosts = ["10.0.0.5"]
}
ssh {
  user = "ops"
}
engine {
  bundle_dir = "/srv/bundles"
}
