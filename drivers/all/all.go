// Package all links every driver into the binary; the CLI imports it for its
// side effects (each driver registers its factory in init).
package all

import (
	_ "github.com/provision/provision/drivers/aws"
	_ "github.com/provision/provision/drivers/azure"
	_ "github.com/provision/provision/drivers/digitalocean"
	_ "github.com/provision/provision/drivers/generic"
	_ "github.com/provision/provision/drivers/libvirt"
	_ "github.com/provision/provision/drivers/local"
)
