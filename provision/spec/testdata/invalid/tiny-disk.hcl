name = "tiny"
driver "aws" { region = "eu-west-1" }
managers {
  count = 1
  disk  = "4GiB"
}
