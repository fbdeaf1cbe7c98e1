name = "tiny"
driver "libvirt" { image = "debian-12.qcow2" }
managers {
  count       = 1
  docker_disk = "2GiB"
}
workers {
  count       = 1
  docker_disk = -1
}
