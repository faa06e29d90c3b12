// Package provider is the Secrets Store CSI provider side of Stowage: it
// reads a SecretProviderClass's `objects` exactly as the AWS provider does
// (same keys, same rules, same messages), plus `optional: true`, and
// evaluates jmesPath entries. The gRPC server on the driver's socket is
// built on it.
package provider

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Object types, as the AWS provider names them.
const (
	TypeSecretsManager = "secretsmanager"
	TypeSSMParameter   = "ssmparameter"
)

// ErrInvalid marks every error of the objects parser.
var ErrInvalid = errors.New("invalid SecretProviderClass objects")

// The AWS provider's check for a path that leaves the mount.
var (
	badPathRE        = regexp.MustCompile(`(\/\.\.\/)|(^\.\.\/)|(\/\.\.$)`)
	filePermissionRE = regexp.MustCompile(`^[0-7]{4}$`)
)

// typeMap is the AWS provider's map of objectType and ARN service.
var typeMap = map[string]string{
	"secretsmanager": TypeSecretsManager,
	"ssmparameter":   TypeSSMParameter,
	"ssm":            TypeSSMParameter,
}

// descriptor is one entry of `objects` as written (keys are the JSON tags,
// as sigs.k8s.io/yaml reads them; unknown keys are ignored, as there).
type descriptor struct {
	ObjectName         string          `json:"objectName"`
	ObjectAlias        string          `json:"objectAlias"`
	ObjectVersion      string          `json:"objectVersion"`
	ObjectVersionLabel string          `json:"objectVersionLabel"`
	ObjectType         string          `json:"objectType"`
	FilePermission     string          `json:"filePermission"`
	JMESPath           []jmesPathEntry `json:"jmesPath"`
	FailoverObject     *failoverObject `json:"failoverObject"`
	// Optional is ours: a missing optional object is left out of the mount
	// instead of failing it.
	Optional bool `json:"optional"`
}

type jmesPathEntry struct {
	Path           string `json:"path"`
	ObjectAlias    string `json:"objectAlias"`
	FilePermission string `json:"filePermission"`
}

type failoverObject struct {
	ObjectName         string `json:"objectName"`
	ObjectVersion      string `json:"objectVersion"`
	ObjectVersionLabel string `json:"objectVersionLabel"`
}

// Object is one validated object of a mount.
type Object struct {
	// Name is the objectName as written: a name or a full ARN.
	Name         string
	Alias        string
	Type         string // TypeSecretsManager or TypeSSMParameter
	Version      string
	VersionLabel string
	// FileName is the file the value is written to, relative to the mount.
	FileName string
	// Mode is the file's mode; 0 means the mount's default.
	Mode     os.FileMode
	JMESPath []JMESPathFile
	Optional bool
}

// JMESPathFile is one key of a JSON secret mounted as a file of its own.
type JMESPathFile struct {
	Path     string
	Alias    string
	FileName string
	Mode     os.FileMode // the object's unless set
}

// Objects is the parsed `objects` of one mount.
type Objects struct {
	Objects []*Object
	// Notes say what was accepted but has no effect here (region,
	// failover), for the provider to log once.
	Notes []string
}

// ParseObjects reads the `objects` parameter with the `pathTranslation`
// parameter of a SecretProviderClass, and validates them as the AWS
// provider does, with these additions: `optional`; `..` is also refused in
// jmesPath aliases; every file name must be a local path and no two
// objects may write the same file.
func ParseObjects(objects, pathTranslation string) (*Objects, error) {
	translate, err := translation(pathTranslation)
	if err != nil {
		return nil, err
	}
	var descs []*descriptor
	if err := yaml.Unmarshal([]byte(objects), &descs); err != nil {
		return nil, fmt.Errorf("%w: Failed to load SecretProviderClass: %+v", ErrInvalid, err)
	}
	if len(descs) == 0 {
		return nil, fmt.Errorf("%w: the objects of the SecretProviderClass list nothing to mount", ErrInvalid)
	}
	out := &Objects{}
	seenAliases := map[string]bool{}
	files := map[string]string{} // file name -> what writes it
	var seen []*descriptor
	for _, d := range descs {
		if d == nil {
			return nil, fmt.Errorf("%w: Empty descriptor entry in SecretProviderClass", ErrInvalid)
		}
		obj, err := d.validate(translate)
		if err != nil {
			return nil, fmt.Errorf("%w: %s", ErrInvalid, err)
		}
		if d.FailoverObject != nil && d.FailoverObject.ObjectName != "" {
			out.Notes = append(out.Notes, fmt.Sprintf("failoverObject of %s is accepted and not used: a Stowage server is one region", d.ObjectName))
		}
		if err := duplicateName(seen, d); err != nil {
			return nil, fmt.Errorf("%w: %s", ErrInvalid, err)
		}
		seen = append(seen, d)
		if d.ObjectAlias != "" {
			if seenAliases[d.ObjectAlias] {
				return nil, fmt.Errorf("%w: found duplicate object alias %s", ErrInvalid, d.ObjectAlias)
			}
			seenAliases[d.ObjectAlias] = true
		}
		for _, j := range d.JMESPath {
			if seenAliases[j.ObjectAlias] {
				return nil, fmt.Errorf("%w: Name already in use for objectAlias: found duplicate object alias %s in JMES path entry %s", ErrInvalid, j.ObjectAlias, j.Path)
			}
			seenAliases[j.ObjectAlias] = true
		}
		if err := claimFile(files, obj.FileName, "object "+d.ObjectName); err != nil {
			return nil, err
		}
		for _, j := range obj.JMESPath {
			if err := claimFile(files, j.FileName, fmt.Sprintf("jmesPath %s of object %s", j.Path, d.ObjectName)); err != nil {
				return nil, err
			}
		}
		out.Objects = append(out.Objects, obj)
	}
	return out, nil
}

// translation reads pathTranslation as the AWS provider does: "" is "_",
// "false" (any case) turns it off, otherwise one character.
func translation(t string) (string, error) {
	switch {
	case t == "":
		return "_", nil
	case strings.ToLower(t) == "false":
		return "", nil
	case len(t) != 1:
		return "", fmt.Errorf("%w: pathTranslation must be either 'False' or a single character string", ErrInvalid)
	}
	return t, nil
}

func fileName(nameOrAlias, translate string) string {
	if translate != "" {
		return strings.ReplaceAll(nameOrAlias, "/", translate)
	}
	return strings.TrimLeft(nameOrAlias, "/")
}

func parseMode(p string) (os.FileMode, error) {
	if p == "" {
		return 0, nil
	}
	if !filePermissionRE.MatchString(p) {
		return 0, fmt.Errorf("Invalid File Permission: %s", p)
	}
	m, _ := strconv.ParseUint(p, 8, 32)
	return os.FileMode(m), nil
}

// arnParts splits an ARN as the AWS SDK's arn.Parse does: six sections.
func arnParts(s string) (service, region string, ok bool) {
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" {
		return "", "", false
	}
	return parts[2], parts[3], true
}

func (d *descriptor) objectType() string {
	if d.ObjectType != "" {
		return typeMap[d.ObjectType]
	}
	service, _, _ := arnParts(d.ObjectName)
	return typeMap[service]
}

// validateObjectName is the AWS provider's check of a name against the
// objectType, without the region check: one server is one region, so an
// ARN of any region names the same secret.
func validateObjectName(name, objectType string) error {
	hasARN := strings.HasPrefix(name, "arn:")
	var service string
	if hasARN {
		var ok bool
		if service, _, ok = arnParts(name); !ok {
			return fmt.Errorf("Invalid ARN format in object name: %s", name)
		}
	}
	if objectType == "" && !hasARN {
		return fmt.Errorf("Must use objectType when a full ARN is not specified: %s", name)
	}
	if _, ok := typeMap[service]; objectType == "" && !ok {
		return fmt.Errorf("Invalid service in ARN: %s", service)
	}
	if _, ok := typeMap[objectType]; objectType != "" && (!ok || objectType == "ssm") {
		return fmt.Errorf("Invalid objectType: %s", objectType)
	}
	if objectType != "" && hasARN && typeMap[objectType] != typeMap[service] {
		return fmt.Errorf("objectType does not match ARN: %s", name)
	}
	return nil
}

func (d *descriptor) validate(translate string) (*Object, error) {
	if d.ObjectName == "" {
		return nil, errors.New("Object name must be specified")
	}
	if err := validateObjectName(d.ObjectName, d.ObjectType); err != nil {
		return nil, err
	}
	typ := d.objectType()
	if typ == TypeSSMParameter && d.ObjectVersion != "" && d.ObjectVersionLabel != "" {
		return nil, fmt.Errorf("ssm parameters can not specify both objectVersion and objectVersionLabel: %s", d.ObjectName)
	}
	name := d.ObjectName
	if d.ObjectAlias != "" {
		name = d.ObjectAlias
	}
	obj := &Object{Name: d.ObjectName, Alias: d.ObjectAlias, Type: typ, Version: d.ObjectVersion, VersionLabel: d.ObjectVersionLabel,
		FileName: fileName(name, translate), Optional: d.Optional}
	if badPathRE.MatchString(obj.FileName) {
		return nil, fmt.Errorf("path can not contain ../: %s", d.ObjectName)
	}
	var err error
	if obj.Mode, err = parseMode(d.FilePermission); err != nil {
		return nil, err
	}
	for _, j := range d.JMESPath {
		if j.Path == "" {
			return nil, errors.New("Path must be specified for JMES object")
		}
		if j.ObjectAlias == "" {
			return nil, errors.New("Object alias must be specified for JMES object")
		}
		jf := JMESPathFile{Path: j.Path, Alias: j.ObjectAlias, FileName: fileName(j.ObjectAlias, translate), Mode: obj.Mode}
		// The AWS provider does not check jmesPath aliases for "..".
		if badPathRE.MatchString(jf.FileName) {
			return nil, fmt.Errorf("path can not contain ../: %s (jmesPath objectAlias of %s)", j.ObjectAlias, d.ObjectName)
		}
		if j.FilePermission != "" {
			if jf.Mode, err = parseMode(j.FilePermission); err != nil {
				return nil, err
			}
		}
		obj.JMESPath = append(obj.JMESPath, jf)
	}
	if f := d.FailoverObject; f != nil && f.ObjectName != "" {
		if d.ObjectAlias == "" {
			return nil, fmt.Errorf("object alias must be specified for objects with failover entries: %s", d.ObjectName)
		}
		if err := validateObjectName(f.ObjectName, d.ObjectType); err != nil {
			return nil, err
		}
		if typ == TypeSSMParameter && f.ObjectVersion != "" && f.ObjectVersionLabel != "" {
			return nil, fmt.Errorf("ssm parameters can not specify both objectVersion and objectVersionLabel: %s", d.ObjectName)
		}
		if f.ObjectVersion != d.ObjectVersion {
			return nil, fmt.Errorf("object versions must match between primary and failover regions: %s", d.ObjectName)
		}
	}
	return obj, nil
}

// duplicateName is the AWS provider's rule: one objectName may appear
// more than once only with different aliases or version labels.
func duplicateName(seen []*descriptor, d *descriptor) error {
	for _, o := range seen {
		if o.ObjectName != d.ObjectName || o.ObjectAlias != d.ObjectAlias || o.ObjectVersionLabel != d.ObjectVersionLabel {
			continue
		}
		prefix := "found descriptor with duplicate object name " + d.ObjectName
		switch {
		case d.ObjectAlias != "" && d.ObjectVersionLabel == "":
			return fmt.Errorf("%s, duplicate object alias %s, and no version label", prefix, d.ObjectAlias)
		case d.ObjectAlias == "" && d.ObjectVersionLabel != "":
			return fmt.Errorf("%s, no object alias, and duplicate version label %s", prefix, d.ObjectVersionLabel)
		case d.ObjectAlias != "":
			return fmt.Errorf("%s, duplicate object alias %s, and duplicate version label %s", prefix, d.ObjectAlias, d.ObjectVersionLabel)
		default:
			return fmt.Errorf("%s, no object alias, and no version label", prefix)
		}
	}
	return nil
}

// claimFile is ours: the final file names must stay inside the mount and
// be distinct, also after path translation.
func claimFile(files map[string]string, name, what string) error {
	if !filepath.IsLocal(name) || filepath.Clean(name) != name {
		return fmt.Errorf("%w: file name %q of %s is not a plain relative path inside the mount", ErrInvalid, name, what)
	}
	if other, ok := files[name]; ok {
		return fmt.Errorf("%w: %s and %s would both write file %s: give one an objectAlias", ErrInvalid, other, what, name)
	}
	files[name] = what
	return nil
}
