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
