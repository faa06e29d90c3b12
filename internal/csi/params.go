package csi

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// StorageClass parameters, named as the EBS CSI driver names them so that an
// EKS manifest works after changing only the provisioner. Keys are matched
// case-insensitively, as the EBS driver does.
const (
	paramType            = "type"
	paramIOPS            = "iops"
	paramIOPSPerGB       = "iopspergb"
	paramAllowAutoIOPS   = "allowautoiopspergbincrease"
	paramThroughput      = "throughput"
	paramEncrypted       = "encrypted"
	paramKMSKeyID        = "kmskeyid"
	paramFSType          = "csi.storage.k8s.io/fstype"
	paramFSTypeLegacy    = "fstype"
	paramBlockSize       = "blocksize"
	paramInodeSize       = "inodesize"
	paramPVCName         = "csi.storage.k8s.io/pvc/name"
	paramPVCNamespace    = "csi.storage.k8s.io/pvc/namespace"
	paramPVName          = "csi.storage.k8s.io/pv/name"
	tagSpecPrefix        = "tagspecification_"
	k8sParamPrefix       = "csi.storage.k8s.io/"
	contextFSType        = "fsType"
	contextBlockSize     = "blockSize"
	contextInodeSize     = "inodeSize"
	tagPVCName           = "kubernetes.io/created-for/pvc/name"
	tagPVCNamespace      = "kubernetes.io/created-for/pvc/namespace"
	tagPVName            = "kubernetes.io/created-for/pv/name"
	tagCSIVolumeName     = "CSIVolumeName"
	defaultFSType        = "ext4"
	supportedFSTypesText = "ext4, xfs, ext3"
)

var supportedFSTypes = map[string]bool{"ext4": true, "xfs": true, "ext3": true}

var knownParams = []string{paramType, paramIOPS, "iopsPerGB", "allowAutoIOPSPerGBIncrease", paramThroughput, paramEncrypted,
	"kmsKeyId", paramFSType, "blockSize", "inodeSize", "tagSpecification_<n>"}

// createParams is a StorageClass's parameters, parsed.
type createParams struct {
	req     pb.CreateVolumeRequest
	context map[string]string
}

// parseCreateParams turns StorageClass parameters into the Stowage API
// request and the volume context the node plugin formats with. Value ranges
// are checked by the server (internal/block), which names the parameter.
func parseCreateParams(params map[string]string) (*createParams, error) {
	out := &createParams{context: map[string]string{}}
	out.req.Tags = map[string]string{}
	for key, value := range params {
		var err error
		switch lk := strings.ToLower(key); {
		case lk == paramType:
			out.req.Type = value
		case lk == paramIOPS:
			out.req.Iops, err = parseInt(key, value)
		case lk == paramIOPSPerGB:
			out.req.IopsPerGb, err = parseInt(key, value)
		case lk == paramAllowAutoIOPS:
			out.req.AllowAutoIopsPerGbIncrease, err = parseBool(key, value)
		case lk == paramThroughput:
			out.req.ThroughputMibps, err = parseInt(key, value)
		case lk == paramEncrypted:
			out.req.Encrypted, err = parseBool(key, value)
		case lk == paramKMSKeyID:
			out.req.KmsKeyId = value
		case lk == paramFSType || lk == paramFSTypeLegacy:
			fs := strings.ToLower(value)
			if fs != "" && !supportedFSTypes[fs] {
				return nil, fmt.Errorf("parameter %s: file system %q is not supported; use one of %s", key, value, supportedFSTypesText)
			}
			if fs != "" {
				out.context[contextFSType] = fs
			}
		case lk == strings.ToLower(contextBlockSize):
			if _, err = parsePositive(key, value); err == nil {
				out.context[contextBlockSize] = value
			}
		case lk == strings.ToLower(contextInodeSize):
			if _, err = parsePositive(key, value); err == nil {
				out.context[contextInodeSize] = value
			}
		case lk == paramPVCName:
			out.req.Tags[tagPVCName] = value
		case lk == paramPVCNamespace:
			out.req.Tags[tagPVCNamespace] = value
		case lk == paramPVName:
			out.req.Tags[tagPVName] = value
		case strings.HasPrefix(lk, tagSpecPrefix):
			k, v, ok := strings.Cut(value, "=")
			if !ok || strings.TrimSpace(k) == "" {
				return nil, fmt.Errorf("parameter %s: %q is not a tag; write it as key=value", key, value)
			}
			out.req.Tags[strings.TrimSpace(k)] = strings.TrimSpace(v)
		case strings.HasPrefix(lk, k8sParamPrefix):
			// Other keys the external-provisioner may pass (secrets
			// references and the like) are not ours to interpret.
		default:
			return nil, fmt.Errorf("unknown StorageClass parameter %q; known parameters: %s", key, strings.Join(knownParams, ", "))
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// parseMutableParams reads VolumeAttributesClass parameters for
// ControllerModifyVolume: type, iops, throughput and tagSpecification_N.
func parseMutableParams(params map[string]string) (*pb.ModifyVolumeRequest, error) {
	out := &pb.ModifyVolumeRequest{AddTags: map[string]string{}}
	for key, value := range params {
		var err error
		switch lk := strings.ToLower(key); {
		case lk == paramType:
			out.Type = value
		case lk == paramIOPS:
			out.Iops, err = parseInt(key, value)
		case lk == paramThroughput:
			out.ThroughputMibps, err = parseInt(key, value)
		case strings.HasPrefix(lk, tagSpecPrefix):
			k, v, ok := strings.Cut(value, "=")
			if !ok || strings.TrimSpace(k) == "" {
				return nil, fmt.Errorf("parameter %s: %q is not a tag; write it as key=value", key, value)
			}
			out.AddTags[strings.TrimSpace(k)] = strings.TrimSpace(v)
		default:
			return nil, fmt.Errorf("parameter %q cannot be changed on a live volume; mutable parameters: type, iops, throughput, tagSpecification_<n>", key)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func parseInt(key, value string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parameter %s: %q is not a whole number", key, value)
	}
	if n < 0 {
		return 0, fmt.Errorf("parameter %s: %d is negative", key, n)
	}
	return n, nil
}

func parsePositive(key, value string) (int64, error) {
	n, err := parseInt(key, value)
	if err == nil && n == 0 {
		err = fmt.Errorf("parameter %s: must be greater than 0", key)
	}
	return n, err
}

func parseBool(key, value string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(value))
	if err != nil {
		return false, fmt.Errorf("parameter %s: %q is not true or false", key, value)
	}
	return b, nil
}

var mkfsSizeRE = regexp.MustCompile(`^[0-9]+$`)

// formatOptions turns the volume context into mkfs options for fsType.
func formatOptions(fsType string, volumeContext map[string]string) []string {
	var opts []string
	bs, is := volumeContext[contextBlockSize], volumeContext[contextInodeSize]
	switch fsType {
	case "xfs":
		if mkfsSizeRE.MatchString(bs) {
			opts = append(opts, "-b", "size="+bs)
		}
		if mkfsSizeRE.MatchString(is) {
			opts = append(opts, "-i", "size="+is)
		}
	default:
		if mkfsSizeRE.MatchString(bs) {
			opts = append(opts, "-b", bs)
		}
		if mkfsSizeRE.MatchString(is) {
			opts = append(opts, "-I", is)
		}
	}
	return opts
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
