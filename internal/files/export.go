package files

// Export is one access point served over NFS: a directory of the storage
// host, reached by clients as Pseudo (NFSv4) or Path (NFSv3), with every
// request performed as the access point's user when Squash is set.
type Export struct {
	// ID is the NFS server's export id, stable for the life of the access
	// point: it is part of the file handles clients hold.
	ID            uint16
	AccessPointID string
	Path          string // on the storage host
	Pseudo        string // e.g. /fsap-0123…
	// Squash maps every user to AnonUID/AnonGID (the access point's POSIX
	// user); without it the client's identity is used as sent.
	Squash           bool
	AnonUID, AnonGID uint32
	ReadOnly         bool
}
