// Package files is Stowage's shared file systems (EFS-style): the model of
// file systems and access points (what is a valid mode, path, POSIX user),
// and the storage host's side of them, a Tree: one directory tree per file
// system in a pool directory, access-point root directories made with the
// owner and mode their creation info asks for, and per-access-point hard
// quotas.
package files

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

var (
	// ErrInvalid is wrapped by every validation error: the API maps it to
	// INVALID_ARGUMENT.
	ErrInvalid = errors.New("invalid file system parameter")
	// ErrUnsafePath means a path would leave the file system (.., or a
	// symbolic link on the way) or runs into something that is not a
	// directory. It wraps ErrInvalid.
	ErrUnsafePath = fmt.Errorf("%w: unsafe path", ErrInvalid)
	// ErrNotFound means the file system tree or directory does not exist.
	ErrNotFound = errors.New("not found")
	// ErrQuotaUnsupported means the pool's file system cannot enforce a
	// hard quota on a directory tree.
	ErrQuotaUnsupported = errors.New("quotas are not supported by this pool's file system")
	// ErrQuotaNeedsNewDirectory means a quota was asked for a root directory
	// that exists already; a quota can only be put on a tree it starts.
	ErrQuotaNeedsNewDirectory = errors.New("a quota needs a root directory that does not exist yet")
)

// Performance and throughput modes, as EFS names them.
const (
	PerformanceGeneralPurpose = "generalPurpose"
	PerformanceMaxIO          = "maxIO"

	ThroughputBursting    = "bursting"
	ThroughputElastic     = "elastic"
	ThroughputProvisioned = "provisioned"

	// MaxProvisionedThroughputMiBps is EFS's ceiling for provisioned mode.
	MaxProvisionedThroughputMiBps = 3414
)

// Storage classes: where a file system can be reached from.
const (
	StorageOneZone  = "one-zone"
	StorageStandard = "standard"
)

// MaxSecondaryGIDs is how many secondary groups a POSIX user may have, as
// on EFS (and what NFS AUTH_SYS carries).
const MaxSecondaryGIDs = 16

// Modes is a file system's performance and throughput, normalised.
type Modes struct {
	Performance   string
	Throughput    string
	ProvisionedMi int64
}

// ResolveModes fills in the defaults (generalPurpose, bursting) and checks
// that the modes are known and the provisioned throughput fits its mode.
func ResolveModes(performance, throughput string, provisionedMiBps int64) (Modes, error) {
	m := Modes{Performance: performance, Throughput: throughput, ProvisionedMi: provisionedMiBps}
	switch strings.ToLower(m.Performance) {
	case "", strings.ToLower(PerformanceGeneralPurpose):
		m.Performance = PerformanceGeneralPurpose
	case strings.ToLower(PerformanceMaxIO):
		m.Performance = PerformanceMaxIO
	default:
		return m, fmt.Errorf("%w: performance mode %q is not one of %s, %s", ErrInvalid, performance, PerformanceGeneralPurpose, PerformanceMaxIO)
	}
	switch strings.ToLower(m.Throughput) {
	case "", ThroughputBursting:
		m.Throughput = ThroughputBursting
	case ThroughputElastic, ThroughputProvisioned:
		m.Throughput = strings.ToLower(m.Throughput)
	default:
		return m, fmt.Errorf("%w: throughput mode %q is not one of %s, %s, %s", ErrInvalid, throughput, ThroughputBursting, ThroughputElastic, ThroughputProvisioned)
	}
	if m.Throughput == ThroughputProvisioned {
		if m.ProvisionedMi < 1 || m.ProvisionedMi > MaxProvisionedThroughputMiBps {
			return m, fmt.Errorf("%w: provisioned throughput %d MiB/s is outside 1–%d MiB/s", ErrInvalid, m.ProvisionedMi, MaxProvisionedThroughputMiBps)
		}
	} else if m.ProvisionedMi != 0 {
		return m, fmt.Errorf("%w: provisioned throughput (%d MiB/s) needs throughput mode %s, not %s", ErrInvalid, m.ProvisionedMi, ThroughputProvisioned, m.Throughput)
	}
	return m, nil
}

// ParsePermissions reads an octal mode such as "0755" or "750" and allows
// only the permission bits (000–777).
func ParsePermissions(s string) (uint32, error) {
	if s == "" {
		return 0, fmt.Errorf("%w: permissions are empty; give an octal mode from 000 to 777, like 0755", ErrInvalid)
	}
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o777 || len(s) > 4 {
		return 0, fmt.Errorf("%w: permissions %q are not an octal mode from 000 to 777 (like 0755)", ErrInvalid, s)
	}
	return uint32(n), nil
}

// CleanRootPath checks an access point's root directory path and returns
// it in canonical form ("/" or "/a/b"). It must start with "/" (the file
// system's root) and may not contain "." or ".." components, so it can
// never leave the file system by its spelling; symbolic links are refused
// when the path is walked (Tree).
func CleanRootPath(p string) (string, error) {
	if p == "" || p == "/" {
		return "/", nil
	}
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("%w: root directory %q must start with / (the file system's root)", ErrUnsafePath, p)
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%w: root directory %q contains a NUL byte", ErrUnsafePath, p)
	}
	if len(p) > 4096 {
		return "", fmt.Errorf("%w: root directory is %d bytes long; at most 4096 are allowed", ErrInvalid, len(p))
	}
	var parts []string
	for _, c := range strings.Split(p, "/") {
		switch {
		case c == "":
			continue
		case c == "." || c == "..":
			return "", fmt.Errorf("%w: root directory %q has a %q component; paths may not step out of or around the file system", ErrUnsafePath, p, c)
		case strings.HasPrefix(c, tmpPrefix):
			return "", fmt.Errorf("%w: root directory %q: names starting with %q are reserved", ErrInvalid, p, tmpPrefix)
		case len(c) > 255:
			return "", fmt.Errorf("%w: root directory %q has a component longer than 255 bytes", ErrInvalid, p)
		}
		parts = append(parts, c)
	}
	if len(parts) == 0 {
		return "/", nil
	}
	return "/" + strings.Join(parts, "/"), nil
}

// RootDirectory is where an access point is rooted and, when it does not
// exist yet, how to make it.
type RootDirectory struct {
	Path string // canonical, from CleanRootPath
	// Creation is nil when the directory must exist already.
	Creation *CreationInfo
}

// CreationInfo is the owner and mode of a root directory that an access
// point makes.
type CreationInfo struct {
	UID, GID uint32
	Mode     uint32 // permission bits only
}

// CheckPOSIXUser checks the ids of an access point's user: not the
// reserved 2^32-1 ("nobody" in NFS terms means -1) and at most
// MaxSecondaryGIDs secondary groups.
func CheckPOSIXUser(uid, gid uint32, secondary []uint32) error {
	const invalidID = ^uint32(0)
	if uid == invalidID || gid == invalidID {
		return fmt.Errorf("%w: POSIX user %d:%d: 4294967295 is not a valid id", ErrInvalid, uid, gid)
	}
	if len(secondary) > MaxSecondaryGIDs {
		return fmt.Errorf("%w: POSIX user has %d secondary groups; at most %d are allowed", ErrInvalid, len(secondary), MaxSecondaryGIDs)
	}
	for _, g := range secondary {
		if g == invalidID {
			return fmt.Errorf("%w: secondary group 4294967295 is not a valid id", ErrInvalid)
		}
	}
	return nil
}
