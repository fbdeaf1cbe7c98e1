name = "metal"
driver "generic" {
  user     = "admin"
  key_file = "id_ed25519"
}
managers {
  hosts = ["10.0.0.5", "10.0.0.5:22", "[::1]:22"]
}
workers {
  hosts = ["0:0:0:0:0:0:0:1", "H1.Example", "h1.EXAMPLE:22", "999.1.1.1", "010.0.0.5", "10.0.0.5:2222"]
}
