package drivers

import "github.com/provision/provision/templates"

// UserData renders the cloud-init user-data for a machine a cloud driver (or
// libvirt's NoCloud seed) creates: hostname, admin user and key, and the host
// key the engine generated, followed by the spec's own user-data. The result
// holds the private host key: pass it to the platform only, never log it.
func UserData(want MachineSpec) ([]byte, error) {
	return templates.UserData(templates.CloudInit{
		Hostname:       want.Name,
		User:           want.SSH.User,
		AuthorizedKey:  want.SSH.PublicKey,
		HostKeyPrivate: string(want.HostKey.PrivatePEM),
		HostKeyPublic:  want.HostKey.Public,
		Extra:          want.UserData,
	})
}

// BatchUserData renders the user-data of machines launched together in one
// call that takes a single user-data (EC2 RunInstances with a count): want[k]
// is the instance with launch index k (see templates.BatchUserData).
func BatchUserData(want []MachineSpec) ([]byte, error) {
	cs := make([]templates.CloudInit, len(want))
	for k, w := range want {
		cs[k] = templates.CloudInit{
			Hostname:       w.Name,
			User:           w.SSH.User,
			AuthorizedKey:  w.SSH.PublicKey,
			HostKeyPrivate: string(w.HostKey.PrivatePEM),
			HostKeyPublic:  w.HostKey.Public,
			Extra:          w.UserData,
		}
	}
	return templates.BatchUserData(cs)
}
