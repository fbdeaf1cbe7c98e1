name = "edges"
managers { count = 1 }
tls {
  validity = "1h"
}
