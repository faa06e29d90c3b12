package filecsi

import (
	"fmt"
	"regexp"
	"strings"
)

var (
	fileSystemIDRE  = regexp.MustCompile(`^fs-[0-9a-f]{8,40}$`)
	accessPointIDRE = regexp.MustCompile(`^fsap-[0-9a-f]{8,40}$`)
)

// VolumeHandle is what a file volume's id names, in the EFS CSI driver's
// format `fs-…[:/sub/path][:fsap-…]`: a file system, optionally a
// directory in it (inside the access point's root when there is one), and
// optionally an access point. Dynamically provisioned volumes are
// `fs-…::fsap-…`.
type VolumeHandle struct {
	FileSystemID  string
	SubPath       string // "" or an absolute, clean path
	AccessPointID string
}

// String is the handle in the EFS format; ParseVolumeHandle reads it back.
func (h VolumeHandle) String() string {
	switch {
	case h.AccessPointID != "":
		return h.FileSystemID + ":" + h.SubPath + ":" + h.AccessPointID
	case h.SubPath != "":
		return h.FileSystemID + ":" + h.SubPath
	}
	return h.FileSystemID
}

// ParseVolumeHandle reads a volume id or a static PV's volumeHandle:
// `fs-…`, `fs-…:/sub/path`, `fs-…::fsap-…` or `fs-…:/sub/path:fsap-…`
// (an `efs:` prefix, the EFS driver's newer spelling, is accepted too).
func ParseVolumeHandle(s string) (VolumeHandle, error) {
	rest := strings.TrimPrefix(s, "efs:")
	if rest == "" {
		return VolumeHandle{}, fmt.Errorf("volume handle is empty; write it as fs-…[:/sub/path][:fsap-…]")
	}
	tokens := strings.Split(rest, ":")
	if len(tokens) > 3 {
		return VolumeHandle{}, fmt.Errorf("volume handle %q has %d fields separated by ':'; at most 3 are allowed: fs-…[:/sub/path][:fsap-…]", s, len(tokens))
	}
	var h VolumeHandle
	if !fileSystemIDRE.MatchString(tokens[0]) {
		return VolumeHandle{}, fmt.Errorf("volume handle %q: %q is not a file system id (fs- and 8 to 40 lower-case hex digits)", s, tokens[0])
	}
	h.FileSystemID = tokens[0]
	if len(tokens) >= 2 && tokens[1] != "" {
		p, err := cleanSubPath(tokens[1])
		if err != nil {
			return VolumeHandle{}, fmt.Errorf("volume handle %q: %w", s, err)
		}
		h.SubPath = p
	}
	if len(tokens) == 3 && tokens[2] != "" {
		if !accessPointIDRE.MatchString(tokens[2]) {
			return VolumeHandle{}, fmt.Errorf("volume handle %q: %q is not an access point id (fsap- and 8 to 40 lower-case hex digits)", s, tokens[2])
		}
		h.AccessPointID = tokens[2]
	}
	return h, nil
}

// cleanSubPath checks a handle's sub path: absolute, without "." or ".."
// components, returned without a trailing slash ("/" becomes "").
func cleanSubPath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("sub path %q must start with / (it is inside the file system, or the access point's root)", p)
	}
	var parts []string
	for _, c := range strings.Split(p, "/") {
		switch c {
		case "":
		case ".", "..":
			return "", fmt.Errorf("sub path %q has a %q component; paths may not step out of the file system", p, c)
		default:
			if strings.ContainsRune(c, 0) {
				return "", fmt.Errorf("sub path %q contains a NUL byte", p)
			}
			parts = append(parts, c)
		}
	}
	if len(parts) == 0 {
		return "", nil
	}
	return "/" + strings.Join(parts, "/"), nil
}

// ApplyMountOptions takes the access point a static PV names in its
// mountOptions (`accesspoint=fsap-…`, as the EFS driver accepts) into h and
// returns the other options. An access point in both places must be the
// same one.
func ApplyMountOptions(h VolumeHandle, options []string) (VolumeHandle, []string, error) {
	var rest []string
	for _, o := range options {
		k, v, hasValue := strings.Cut(strings.TrimSpace(o), "=")
		if !strings.EqualFold(k, "accesspoint") {
			rest = append(rest, o)
			continue
		}
		v = strings.ToLower(strings.TrimSpace(v))
		if !hasValue || !accessPointIDRE.MatchString(v) {
			return h, nil, fmt.Errorf("mount option %q: %q is not an access point id (fsap- and 8 to 40 lower-case hex digits)", o, v)
		}
		if h.AccessPointID != "" && h.AccessPointID != v {
			return h, nil, fmt.Errorf("mount option %q conflicts with the access point %s of volume handle %s; name one access point", o, h.AccessPointID, h.String())
		}
		h.AccessPointID = v
	}
	return h, rest, nil
}
