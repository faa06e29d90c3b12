package filecsi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
)

// StorageClass parameters, named as the EFS CSI driver names them so that
// an EKS StorageClass works after changing only the provisioner. Keys are
// matched case-insensitively (the block driver does the same).
const (
	paramProvisioningMode = "provisioningMode"
	paramFileSystemID     = "fileSystemId"
	paramDirectoryPerms   = "directoryPerms"
	paramUID              = "uid"
	paramGID              = "gid"
	paramGIDRangeStart    = "gidRangeStart"
	paramGIDRangeEnd      = "gidRangeEnd"
	paramBasePath         = "basePath"
	paramSubPathPattern   = "subPathPattern"
	paramEnsureUnique     = "ensureUniqueDirectory"
	paramReuseAccessPoint = "reuseAccessPoint"
	paramDeleteRootDir    = "deleteAccessPointRootDir"
	paramAZ               = "az"
	paramQuota            = "quota"

	paramPVCName      = "csi.storage.k8s.io/pvc/name"
	paramPVCNamespace = "csi.storage.k8s.io/pvc/namespace"
	paramPVName       = "csi.storage.k8s.io/pv/name"
	k8sParamPrefix    = "csi.storage.k8s.io/"

	modeEFSAccessPoint = "efs-ap"
	modeAccessPoint    = "access-point"

	// The EFS driver's default gid range (docs/parameters.md).
	defaultGIDRangeStart = 50000
	defaultGIDRangeEnd   = 7000000
	maxID                = 4294967294 // 2^32-1 is no valid id
)

var knownParams = []string{paramProvisioningMode, paramFileSystemID, paramDirectoryPerms, paramUID, paramGID,
	paramGIDRangeStart, paramGIDRangeEnd, paramBasePath, paramSubPathPattern, paramEnsureUnique,
	paramReuseAccessPoint, paramDeleteRootDir, paramAZ, paramQuota}

// EFS driver parameters this driver does not take, and why.
var efsOnlyParams = map[string]string{
	"filesystemidconfigref": "give the file system id as fileSystemId",
	"filesystemidsecretref": "give the file system id as fileSystemId",
	"enabletagging":         "access points are always tagged with the claim they were made for",
	"enforcezoneaffinity":   "file systems are reached from every zone; a One Zone file system's zone is checked with az",
}

// Variables a subPathPattern may use, and the parameter each comes from.
var subPathVariables = map[string]string{
	"${.PVC.name}":      paramPVCName,
	"${.PVC.namespace}": paramPVCNamespace,
	"${.PV.name}":       paramPVName,
}

func subPathVariableNames() string {
	names := make([]string, 0, len(subPathVariables))
	for n := range subPathVariables {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// createParams is a StorageClass's parameters, parsed and checked.
type createParams struct {
	fileSystemID string
	permissions  string // as written, octal 000–777
	uid, gid     int64  // -1: allocate from the gid range
	gidStart     int64
	gidEnd       int64
	rangeGiven   bool
	basePath     string // "/" or "/a/b"
	pattern      string // subPathPattern as written; "" when not given
	hasPattern   bool
	ensureUnique bool
	reuse        bool
	deleteRoot   bool
	az           string
	quota        bool
	pvcName      string
	pvcNamespace string
	pvName       string
}

// parseCreateParams reads a StorageClass's parameters (and the
// external-provisioner's csi.storage.k8s.io/* metadata). Every refusal
// names the parameter, the value and what is allowed.
func parseCreateParams(params map[string]string) (*createParams, error) {
	p := &createParams{uid: -1, gid: -1, ensureUnique: true, basePath: "/"}
	var mode, start, end string
	var haveMode, haveFS, havePerms, haveStart, haveEnd bool
	for key, value := range params {
		var err error
		switch lk := strings.ToLower(key); lk {
		case strings.ToLower(paramProvisioningMode):
			mode, haveMode = value, true
		case strings.ToLower(paramFileSystemID):
			if !fileSystemIDRE.MatchString(value) {
				return nil, fmt.Errorf("parameter %s: %q is not a file system id (fs- and 8 to 40 lower-case hex digits, as `stowage fs list` shows)", paramFileSystemID, value)
			}
			p.fileSystemID, haveFS = value, true
		case strings.ToLower(paramDirectoryPerms):
			if !validPerms(value) {
				return nil, fmt.Errorf("parameter %s: %q is not an octal mode from 000 to 777 (e.g. \"700\" or \"0755\")", paramDirectoryPerms, value)
			}
			p.permissions, havePerms = value, true
		case paramUID:
			p.uid, err = parseID(paramUID, value, "user id")
		case paramGID:
			p.gid, err = parseID(paramGID, value, "group id")
		case strings.ToLower(paramGIDRangeStart):
			start, haveStart = value, true
		case strings.ToLower(paramGIDRangeEnd):
			end, haveEnd = value, true
		case strings.ToLower(paramBasePath):
			p.basePath, err = cleanBasePath(value)
		case strings.ToLower(paramSubPathPattern):
			if err = checkPattern(value); err == nil {
				p.pattern, p.hasPattern = value, true
			}
		case strings.ToLower(paramEnsureUnique):
			p.ensureUnique, err = parseBool(paramEnsureUnique, value)
		case strings.ToLower(paramReuseAccessPoint):
			p.reuse, err = parseBool(paramReuseAccessPoint, value)
		case strings.ToLower(paramDeleteRootDir):
			p.deleteRoot, err = parseBool(paramDeleteRootDir, value)
		case paramAZ:
			p.az = strings.TrimSpace(value)
		case paramQuota:
			p.quota, err = parseBool(paramQuota, value)
		case paramPVCName:
			p.pvcName = value
		case paramPVCNamespace:
			p.pvcNamespace = value
		case paramPVName:
			p.pvName = value
		default:
			if strings.HasPrefix(lk, k8sParamPrefix) {
				// Other keys the external-provisioner passes (secret
				// references and the like) are not ours to interpret.
				continue
			}
			if why, ok := efsOnlyParams[lk]; ok {
				return nil, fmt.Errorf("parameter %s of the EFS CSI driver is not supported by %s: %s", key, DriverName, why)
			}
			return nil, fmt.Errorf("unknown StorageClass parameter %q; known parameters: %s", key, strings.Join(knownParams, ", "))
		}
		if err != nil {
			return nil, err
		}
	}
	switch {
	case !haveMode:
		return nil, fmt.Errorf("parameter %s is required: %q or %q (each volume is an access point)", paramProvisioningMode, modeEFSAccessPoint, modeAccessPoint)
	case mode != modeEFSAccessPoint && mode != modeAccessPoint:
		return nil, fmt.Errorf("parameter %s: %q is not supported; use %q or %q (each volume is an access point)", paramProvisioningMode, mode, modeEFSAccessPoint, modeAccessPoint)
	case !haveFS:
		return nil, fmt.Errorf("parameter %s is required: the file system (fs-…) the access points are made in; `stowage fs list` shows them", paramFileSystemID)
	case !havePerms:
		return nil, fmt.Errorf("parameter %s is required: the octal mode (000 to 777) each volume's root directory is made with, e.g. \"700\"", paramDirectoryPerms)
	case haveStart && !haveEnd:
		return nil, fmt.Errorf("parameter %s=%s is given without %s; give both ends of the gid range or neither", paramGIDRangeStart, start, paramGIDRangeEnd)
	case haveEnd && !haveStart:
		return nil, fmt.Errorf("parameter %s=%s is given without %s; give both ends of the gid range or neither", paramGIDRangeEnd, end, paramGIDRangeStart)
	}
	p.gidStart, p.gidEnd = defaultGIDRangeStart, defaultGIDRangeEnd
	if haveStart {
		var err error
		if p.gidStart, err = parseID(paramGIDRangeStart, start, "group id"); err != nil {
			return nil, err
		}
		if p.gidStart == 0 {
			return nil, fmt.Errorf("parameter %s: 0 is root's group; the range must start above 0", paramGIDRangeStart)
		}
		if p.gidEnd, err = parseID(paramGIDRangeEnd, end, "group id"); err != nil {
			return nil, err
		}
		if p.gidEnd < p.gidStart {
			return nil, fmt.Errorf("parameter %s: %d is below %s %d; the range is inclusive and must not be empty", paramGIDRangeEnd, p.gidEnd, paramGIDRangeStart, p.gidStart)
		}
		p.rangeGiven = true
	}
	if p.reuse && (p.pvcName == "" || p.pvcNamespace == "") {
		return nil, fmt.Errorf("parameter %s=true names the access point after the claim, but the provisioner passed no %s and %s; run csi-provisioner with --extra-create-metadata",
			paramReuseAccessPoint, paramPVCName, paramPVCNamespace)
	}
	return p, nil
}

func validPerms(s string) bool {
	if len(s) == 0 || len(s) > 4 {
		return false
	}
	n, err := strconv.ParseUint(s, 8, 32)
	return err == nil && n <= 0o777
}

func parseID(key, value, what string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
	if err != nil || n < 0 || n > maxID {
		return 0, fmt.Errorf("parameter %s: %q is not a %s (a whole number from 0 to %d)", key, value, what, int64(maxID))
	}
	return n, nil
}

func parseBool(key, value string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(value))
	if err != nil {
		return false, fmt.Errorf("parameter %s: %q is not true or false", key, value)
	}
	return b, nil
}

// cleanBasePath accepts "/dynamic_provisioning" or "dynamic_provisioning"
// (both are under the file system's root, as with EFS) and refuses ".".
// and ".." components, which could step out of it.
func cleanBasePath(v string) (string, error) {
	var parts []string
	for _, c := range strings.Split(v, "/") {
		switch {
		case c == "":
		case c == "." || c == "..":
			return "", fmt.Errorf("parameter %s: %q has a %q component; the base path may not step out of the file system", paramBasePath, v, c)
		case strings.ContainsRune(c, 0):
			return "", fmt.Errorf("parameter %s: %q contains a NUL byte", paramBasePath, v)
		default:
			parts = append(parts, c)
		}
	}
	return "/" + strings.Join(parts, "/"), nil
}

// checkPattern refuses a subPathPattern that is absolute, steps out with
// "..", or uses a variable other than ${.PVC.name}, ${.PVC.namespace} and
// ${.PV.name}.
func checkPattern(v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("parameter %s is empty; leave it out for the default (the volume's name) or use %s", paramSubPathPattern, subPathVariableNames())
	}
	if strings.HasPrefix(v, "/") {
		return fmt.Errorf("parameter %s: %q is absolute; it is a path under %s, write it without the leading /", paramSubPathPattern, v, paramBasePath)
	}
	if strings.ContainsRune(v, 0) {
		return fmt.Errorf("parameter %s: %q contains a NUL byte", paramSubPathPattern, v)
	}
	rest := v
	for {
		i := strings.Index(rest, "${")
		if i < 0 {
			break
		}
		j := strings.Index(rest[i:], "}")
		if j < 0 {
			return fmt.Errorf("parameter %s: %q has a ${ without its closing }; variables are %s", paramSubPathPattern, v, subPathVariableNames())
		}
		name := rest[i : i+j+1]
		if _, ok := subPathVariables[name]; !ok {
			return fmt.Errorf("parameter %s: %q uses %s, which is not a known variable; known variables: %s", paramSubPathPattern, v, name, subPathVariableNames())
		}
		rest = rest[i+j+1:]
	}
	for _, c := range strings.Split(v, "/") {
		if c == "." || c == ".." {
			return fmt.Errorf("parameter %s: %q has a %q component; the sub path may not step out of %s", paramSubPathPattern, v, c, paramBasePath)
		}
	}
	return nil
}

// rootDirectory is where volume name's access point is rooted: basePath
// joined with subPathPattern's expansion (plus a suffix unique to the
// volume, with ensureUniqueDirectory) or, without a pattern, the volume's
// name. The suffix is derived from the volume name, so that a retried
// CreateVolume asks for the same directory.
func (p *createParams) rootDirectory(volumeName string) (string, error) {
	if !p.hasPattern {
		if err := checkComponent(paramSubPathPattern, "the volume name", volumeName); err != nil {
			return "", err
		}
		return path.Join(p.basePath, volumeName), nil
	}
	values := map[string]string{
		"${.PVC.name}":      p.pvcName,
		"${.PVC.namespace}": p.pvcNamespace,
		"${.PV.name}":       p.pvName,
	}
	if values["${.PV.name}"] == "" {
		values["${.PV.name}"] = volumeName // the CSI name is the PV's name
	}
	var b strings.Builder
	rest := p.pattern
	for {
		i := strings.Index(rest, "${")
		if i < 0 {
			b.WriteString(rest)
			break
		}
		b.WriteString(rest[:i])
		j := strings.Index(rest[i:], "}")
		name := rest[i : i+j+1]
		val := values[name]
		if val == "" {
			return "", fmt.Errorf("parameter %s: %q uses %s, but the provisioner passed no %s; run csi-provisioner with --extra-create-metadata",
				paramSubPathPattern, p.pattern, name, subPathVariables[name])
		}
		if err := checkComponent(paramSubPathPattern, name, val); err != nil {
			return "", err
		}
		b.WriteString(val)
		rest = rest[i+j+1:]
	}
	sub := b.String()
	if p.ensureUnique {
		sub += "-" + uniqueSuffix(volumeName)
	}
	for _, c := range strings.Split(sub, "/") {
		if c == "." || c == ".." {
			return "", fmt.Errorf("parameter %s: %q expands to %q, which has a %q component", paramSubPathPattern, p.pattern, sub, c)
		}
	}
	return path.Join(p.basePath, sub), nil
}

// checkComponent refuses a value that would add or step out of
// directories when put into a path.
func checkComponent(param, what, v string) error {
	if v == "." || v == ".." || strings.ContainsAny(v, "/\x00") {
		return fmt.Errorf("parameter %s: %s %q cannot be a directory name", param, what, v)
	}
	return nil
}

// uniqueSuffix is a UUID-shaped name derived from the volume name (EFS
// appends a random UUID; a derived one gives a retry the same directory).
func uniqueSuffix(volumeName string) string {
	h := sha256.Sum256([]byte("file.csi.stowage.io/" + volumeName))
	x := hex.EncodeToString(h[:16])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

// reuseToken is the access point name reuseAccessPoint gives a claim: the
// same namespace/name gives the same access point, in any cluster.
func reuseToken(namespace, name string) string {
	h := sha256.Sum256([]byte(namespace + "/" + name))
	return "pvc-reuse-" + hex.EncodeToString(h[:])
}
